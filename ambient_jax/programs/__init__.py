"""Command-line programs (console scripts in setup.cfg), one thin module each:

ambient-train, ambient-sample, ambient-eval, ambient-diagnose (per-noise-level diagnosis),
ambient-sweep, ambient-convert, ambient-prepare, ambient-labelmem.
"""
