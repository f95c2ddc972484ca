"""Plain PyTorch building blocks: no Lightning imports below this package."""
