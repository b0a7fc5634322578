"""The engine: static programs, checkpoints, embedding an image list, the training loop.

Most of it imports Paddle, which the scripts load after the configuration is settled; network_spec.py,
checkpoint/storage.py and checkpoint/run_state.py do not (the configuration step reads them).
"""
