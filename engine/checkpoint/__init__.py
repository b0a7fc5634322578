"""Checkpoints: writing them safely, resuming from them, finetuning from them.

A checkpoint is a directory `<model_save_dir>/<model>/<N>/` holding
  model.safetensors       the parameters (batch-norm statistics included)
  optimizer.safetensors   the optimizer's persistable state (momentum velocities, Adam's moments); absent when empty
  state.json              the run state (run_state.RunState): position, LR scheduler, class ids,
                          the network (NetworkSpec), the arguments, and the extensions' records
and `<model_save_dir>/<model>/latest` is a symbolic link to the newest one, `best` to the one of the best
validation Recall@1; train.py keeps the last --keep_checkpoints of them besides those two.

The package has one module per concern:
  storage.py     crash-safe folders: atomic saves, `latest`, repairing killed saves, reading state.json
                 (arrays in, arrays out; no Paddle)
  run_state.py   the versioned state.json record, validated when read (no Paddle)
  foreign.py     reading parameters in any format a folder or file may hold (ours, Paddle's pickles and
                 torch's .pth without running code, Paddle 1.x per-variable files)
  imagenet.py    torchvision/timm and PaddleClas ResNet weights renamed to our parameter names
  convert.py     `python -m engine.checkpoint.convert`: such weights once into a folder of ours
  program_io.py  copying arrays between a static program and a checkpoint (save, resume, evaluate, finetune)
"""
from engine.checkpoint.foreign import load_checkpoint_state
from engine.checkpoint.program_io import (load_all_parameters, load_matching, program_parameters, program_state,
                                          restore, save_checkpoint)
from engine.checkpoint.run_state import RunState
from engine.checkpoint.storage import (BEST, LATEST, OPTIMIZER_FILE, PARAMS_FILE, STATE_FILE, NonFiniteError,
                                       link_target, non_finite_names, point_best, prune, read_state,
                                       remove_stale_temporaries, resolve)

__all__ = ["BEST", "LATEST", "OPTIMIZER_FILE", "PARAMS_FILE", "STATE_FILE", "NonFiniteError", "RunState",
           "link_target", "load_all_parameters", "load_checkpoint_state", "load_matching", "non_finite_names",
           "point_best", "program_parameters", "program_state", "prune", "read_state", "remove_stale_temporaries",
           "resolve", "restore", "save_checkpoint"]
