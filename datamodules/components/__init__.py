"""Datasets, samplers and transforms used by the datamodules (no Lightning imports)."""
