"""Recipes: a run's flags written down in a YAML file, `train.py --config recipes/omniglot_best.yaml`.

A recipe is a mapping of flag names (without the dashes) to values:

    base: omniglot/common.yaml        # optional: another recipe, relative to this file, read first
    model: ResNet18
    image_shape: [3, 32, 32]
    loss_name: batchhardtripletloss
    hflip: false

Flags typed on the command line override the recipe's (they come after it), and the recipe's values
count as typed: demo settings never replace them. The resolved configuration, recipe included, is
printed and saved with every checkpoint as before. YAML is read with PyYAML's safe loader (plain
values only: a recipe cannot run code).
"""
import os

from utility.errors import UserError

BASE_KEY = "base"
MAX_DEPTH = 8  # bases of bases: deeper is a loop or a mistake


def load_recipe(path, _depth=0):
    """The recipe at `path` as {flag: value}, its bases merged first (the file's own values win)."""
    import yaml

    if _depth > MAX_DEPTH:
        raise UserError(f"recipe {path}: more than {MAX_DEPTH} levels of '{BASE_KEY}' (a loop?)")
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except OSError as err:
        raise UserError(f"cannot read recipe {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise UserError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UserError(f"recipe {path} must be a mapping of flag names to values, not a {type(values).__name__}")
    base = values.pop(BASE_KEY, None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise UserError(f"recipe {path}: '{BASE_KEY}' must be a file name, got {base!r}")
    return {**load_recipe(os.path.join(os.path.dirname(path), base), _depth + 1), **values}


def recipe_argv(path, known_flags):
    """The recipe at `path` as command-line tokens, ["--name=value", ...]; UserError for an unknown name."""
    tokens = []
    for name, value in load_recipe(path).items():
        if name not in known_flags:
            raise UserError(f"recipe {path}: unknown setting '{name}' (there is no --{name}; "
                            f"see --help for the flags)")
        tokens.append(f"--{name}={_as_text(path, name, value)}")
    return tokens


def _as_text(path, name, value):
    """A YAML value as the flag's text: lists joined by commas, booleans as True/False."""
    if isinstance(value, (list, tuple)):
        return ",".join(_as_text(path, name, item) for item in value)
    if isinstance(value, bool):
        return str(value)
    if value is None or isinstance(value, dict):
        raise UserError(f"recipe {path}: '{name}' needs a value (a number, a word, true/false or a list), "
                        f"got {value!r}")
    return str(value)
