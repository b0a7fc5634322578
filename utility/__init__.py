"""Plumbing shared by train.py, eval.py and infer.py (arguments, errors, checkpoints, metrics)."""
import logging
import os
import warnings

# Paddle's C++ info/warning lines ("New Executor is Running", ...) would drown the progress lines;
# this must be set before paddle is first imported. Errors still show.
os.environ.setdefault("GLOG_minloglevel", "2")
for _noise in ("No ccache found", "When training, we now always track global mean",
               "Tensor do not have 'place' interface"):
    warnings.filterwarnings("ignore", message=_noise)

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # "Could not load library with AVX2 support"

from utility.args import parse_args, print_arguments  # noqa: E402
from utility.errors import UserError, run_cli  # noqa: E402
