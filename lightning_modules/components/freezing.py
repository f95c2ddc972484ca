"""Freezing parts of a model by module path (prompt-tuning, staged training).

``frozen_paths`` turns "train only these" / "freeze these" into the list of top-most frozen
module paths; ``freeze`` switches their gradients off. A system keeps the frozen modules in
eval mode while training (no drop-path or dropout in a part that does not learn).
"""

from collections.abc import Sequence

from torch import nn


def frozen_paths(root: nn.Module, scope: str, trainable: Sequence[str] | None,
                 frozen: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """Paths (relative to ``root``) of the modules to freeze.

    trainable: paths that train; every other module under ``scope`` (e.g. "detector") is frozen,
    ancestors of a trainable path are split into their children. None: nothing frozen by this
    rule. frozen: paths frozen in any case. An unknown path raises ``ValueError``.
    """
    names = {n for n, _ in root.named_modules()}
    for path in [*(trainable or []), *frozen]:
        if path not in names:
            raise ValueError(f"no module {path!r} to train/freeze (e.g. {scope}.backbone)")
    paths = list(frozen)
    if trainable is None:
        return paths
    pending = [scope]
    while pending:
        path = pending.pop()
        for child, _ in root.get_submodule(path).named_children():
            child_path = f"{path}.{child}"
            if child_path in trainable:
                continue
            if any(t.startswith(child_path + ".") for t in trainable):
                pending.append(child_path)  # an ancestor of a trainable module: descend
            else:
                paths.append(child_path)
    return paths


def freeze(root: nn.Module, paths: Sequence[str]) -> None:
    """requires_grad=False on every parameter under ``paths``."""
    for path in paths:
        root.get_submodule(path).requires_grad_(False)
