"""Demonstrations of trained models: pictures of their predictions next to the ground truth."""
