"""The engine: static programs, checkpoints, embedding an image list, the training loop.

Everything here imports Paddle; the scripts import it after the configuration is settled.
"""
