"""Errors caused by user input: reported as one clear message, without a traceback."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import InstantiationException

from datamodules.components.errors import DatasetNotFoundError


class UserFacingError(Exception):
    """Bad input (a path, a checkpoint, a config value) that the user can fix."""


class CheckpointError(UserFacingError):
    """A checkpoint is missing, corrupt, or does not fit the configured model."""


USER_ERRORS = (UserFacingError, DatasetNotFoundError)


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Print user errors as ``error: <message>`` and exit with status 2; re-raise everything else."""
    try:
        yield
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except InstantiationException as err:
        # Hydra wraps errors raised while building an object from the config (e.g. a head size
        # that cannot fit a checkpoint); the cause decides whether the user can fix it.
        if not isinstance(err.__cause__, USER_ERRORS):
            raise
        print(f"error: {err.__cause__}", file=sys.stderr)
        sys.exit(2)
