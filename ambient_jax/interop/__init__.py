"""Weights from elsewhere: PyTorch files read without running them, EDM snapshots as work dirs."""
