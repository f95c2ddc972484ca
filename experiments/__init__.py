"""Entry points (train, evaluate, ...) and the helpers they share."""
