"""Plumbing shared by train.py, eval.py and infer.py (arguments, errors, checkpoints, metrics)."""
from utility.args import parse_args, print_arguments
from utility.errors import UserError, run_cli
