"""User-facing data errors: each message says what is wrong and how to fix it."""

from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not under the configured data root and may not be downloaded."""

    def __init__(self, name: str, root: Path | str, hint: str = "") -> None:
        root = Path(root)
        msg = (
            f"Dataset '{name}' was not found under {root.resolve()}.\n"
            f"  - Point the data root at a folder holding it: set the DATA_DIR environment variable "
            f"or pass paths.data_dir=/path/to/data.\n"
            f"  - Or let torchvision download it (needs internet): pass data.download=true."
        )
        if hint:
            msg += f"\n  - {hint}"
        super().__init__(msg)
        self.name = name
        self.root = root
