"""Command-line programs: ambient-train, ambient-sample, ambient-eval."""
