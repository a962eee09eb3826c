"""ambient-jax: diffusion models on small data sets without copying them (Shah et al. 2025)."""

__version__ = "0.1.0"
