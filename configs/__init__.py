"""The experiment configs (ml_collections config files: FILE.py or FILE.py:ARG).

They sit at the top of the repository and install as `ambient_jax.configs`, so the programs'
default (`mnist.py`) and the recipe the paper's configs share (`paper.py`) are found wherever
the package is installed.
"""
