"""The command-line utility shared by train.py, eval.py and infer.py: flags, errors, progress, process setup."""
from utility.args import parse_args, print_arguments  # noqa: F401
from utility.errors import UserError, run_cli  # noqa: F401
