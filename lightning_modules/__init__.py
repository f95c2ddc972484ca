"""LightningModules (thin systems) and plain-PyTorch components for the DINO family."""
