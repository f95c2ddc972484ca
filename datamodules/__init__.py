"""LightningDataModules for benchmark, curated and synthetic data."""
