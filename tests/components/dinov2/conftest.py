"""Shared settings for the DINOv2 component tests."""
