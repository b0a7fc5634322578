import json
import shlex
from pathlib import Path

import pytest

from cli.args import parse_args
from cli.recipes import load_recipe
from utility.errors import UserError

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
DATA_FLAGS = ("--data_dir", "--train_list", "--val_list", "--model_save_dir")


def _recorded_command(tag):
    """The train.py flags of the last run with `tag` in bench/results/omniglot.jsonl or omniglot-tuning.jsonl
    (the held-out runs that chose a recipe)."""
    records = []
    for name in ("omniglot.jsonl", "omniglot-tuning.jsonl"):
        with open(REPO / "bench" / "results" / name) as f:
            records += [json.loads(line) for line in f if line.strip()]
    return shlex.split([r for r in records if r.get("tag") == tag][-1]["command"])[1:]


@pytest.mark.parametrize("recipe, tag", [("omniglot_best.yaml", "strong-stem-ink-rot10"),
                                         ("omniglot_quick.yaml", "val-quick-ink-rot10-seed0")])
def test_recipe_files_reproduce_the_recorded_runs(recipe, tag):
    recorded = _recorded_command(tag)
    data_flags = [token for token in recorded if token.split("=")[0] in DATA_FLAGS]
    from_command_line = vars(parse_args("train", recorded))
    from_recipe = vars(parse_args("train", [f"--config={RECIPES / recipe}", *data_flags]))
    differences = {name: (value, from_recipe[name]) for name, value in from_command_line.items()
                   if name not in ("explicit", "config") and from_recipe[name] != value}
    assert differences == {}


def test_the_command_line_overrides_the_recipe_and_recipe_values_count_as_typed(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 0.5\nimage_shape: [3, 48, 48]\nhflip: false\nlr_steps: [10, 20]\n")
    args = parse_args("train", [f"--config={recipe}", "--lr=0.2"])
    assert (args.lr, args.image_shape, args.hflip, args.lr_steps) == (0.2, (3, 48, 48), False, [10, 20])
    assert {"lr", "image_shape", "hflip", "lr_steps", "config"} <= args.explicit
    assert parse_args("train", ["--lr=0.2", f"--config={recipe}"]).lr == 0.2  # wherever --config stands


def test_recipe_values_survive_the_digits_demo_settings(tmp_path):
    from cli.config import resolve

    recipe = tmp_path / "r.yaml"
    recipe.write_text("image_shape: [3, 40, 40]\ntotal_iter_num: 7\n")
    digits = tmp_path / "digits"
    (digits).mkdir()
    for name in ("train.txt", "val.txt"):
        (digits / name).write_text("")
    config = resolve("train", [f"--config={recipe}"], digits_dir=str(digits))
    assert config.image_shape == (3, 40, 40) and config.total_iter_num == 7
    assert config.train_batch_size == 60  # a demo setting the recipe left alone


def test_a_base_is_read_first_and_the_file_wins(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("lr: 0.1\nmargin: 0.3\n")
    (tmp_path / "sub" / "top.yaml").write_text("base: ../base.yaml\nlr: 0.2\n")
    assert load_recipe(str(tmp_path / "sub" / "top.yaml")) == {"lr": 0.2, "margin": 0.3}


@pytest.mark.parametrize("text, message", [
    ("lrr: 0.1\n", "unknown setting 'lrr'"),
    ("- lr\n", "must be a mapping"),
    ("lr: [0.1\n", "not valid YAML"),
    ("lr:\n", "'lr' needs a value"),
    ("lr: !!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
    ("base: self.yaml\n", "levels of 'base'"),
    ("base: 3\n", "'base' must be a file name"),
])
def test_bad_recipes_are_one_line_errors(tmp_path, text, message):
    recipe = tmp_path / "self.yaml"
    recipe.write_text(text)
    with pytest.raises(UserError, match=message):
        parse_args("train", [f"--config={recipe}"])


def test_a_missing_recipe_names_the_file(tmp_path):
    with pytest.raises(UserError, match="cannot read recipe .*nothing.yaml"):
        parse_args("train", [f"--config={tmp_path / 'nothing.yaml'}"])


@pytest.mark.parametrize("recipe", sorted(str(path.relative_to(RECIPES)) for path in RECIPES.rglob("*.yaml")))
def test_every_shipped_recipe_parses(recipe):
    parse_args("train", [f"--config={RECIPES / recipe}"])
