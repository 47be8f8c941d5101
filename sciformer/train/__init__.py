"""Training: loop, checkpoints, distributed plumbing."""
