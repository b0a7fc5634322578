"""The bottom layer: what every package shares and that imports nothing of the project (errors, progress)."""
