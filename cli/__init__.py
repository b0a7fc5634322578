"""The command-line layer: flags, the one configuration step, recipes, process setup.

The top of the import graph: it may import every package; nothing below imports it.
"""
