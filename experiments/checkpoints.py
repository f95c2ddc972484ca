"""Reading checkpoints safely: corrupt files and architecture mismatches get a clear message."""

import pickle
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn

from callbacks.atomic_checkpoint_io import AtomicCheckpointIO
from callbacks.pruning_schedule import MASK_NAME
from experiments.errors import CheckpointError

MAX_LISTED = 5


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint on CPU (memory-mapped: tensor data is read lazily)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (
        RuntimeError,
        OSError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
    ) as err:
        raise CheckpointError(
            f"Checkpoint {path} is corrupt or truncated and cannot be read ({type(err).__name__}). "
            f"If the run was interrupted, use the previous checkpoint in {path.parent}."
        ) from err


def check_state_dict_compatible(
    checkpoint: dict[str, Any], model: nn.Module, path: str | Path
) -> None:
    """Raise ``CheckpointError`` listing missing, unexpected and mis-shaped weights, if any."""
    if "state_dict" not in checkpoint:
        raise CheckpointError(
            f"Checkpoint {path} holds no 'state_dict'; is it a Lightning checkpoint?"
        )
    saved = checkpoint["state_dict"]
    expected = model.state_dict()
    missing = [k for k in expected if k not in saved]
    # Pruning masks are registered by PruningScheduleCallback.setup, after this check.
    unexpected = [k for k in saved if k not in expected and not k.endswith(f".{MASK_NAME}")]
    shapes = [
        f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in saved and tuple(saved[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    lines = [f"Checkpoint {path} does not fit the configured model {type(model).__name__}:"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
            lines.append(f"  {title}: {', '.join(items[:MAX_LISTED])}{more}")
    saved_model = checkpoint.get("run_config", {}).get("model", {}).get("net", {}).get("_target_")
    if saved_model:
        lines.append(f"  the checkpoint was trained with net={saved_model}")
    raise CheckpointError("\n".join(lines))


def module_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the LightningModule of a checkpoint written by this project, weights loaded.

    Returns (module, run_config). The architecture comes from ``checkpoint["run_config"]``.
    """
    checkpoint = load_checkpoint(path)
    run_config = checkpoint.get("run_config")
    if not run_config or "model" not in run_config:
        raise CheckpointError(
            f"Checkpoint {path} has no stored run config; it was not written by this project's "
            "experiments/ entry points."
        )
    module = instantiate(run_config["model"])
    check_state_dict_compatible(checkpoint, module, path)
    module.load_state_dict(checkpoint["state_dict"])
    return module, run_config


def save_module_checkpoint(
    module: L.LightningModule, path: str | Path, run_config: dict[str, Any]
) -> None:
    """Write a weights-only Lightning checkpoint atomically (loadable by ``load_from_checkpoint``)."""
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": L.__version__,
        "run_config": run_config,
    }
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
