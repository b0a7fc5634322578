"""Retrieval quality on real data: train and evaluate on the project's Omniglot split.

    python bench/omniglot.py --quick                       # recipes/omniglot_quick.yaml, ~9 min on 2 CPU cores
    python bench/omniglot.py --recipe recipes/omniglot_best.yaml --rotated_classes   # the best recipe, ~20 min on 2 cores
    python bench/omniglot.py --losses softmax,emlloss      # the table: each loss with its recipe (default: all)
    python bench/omniglot.py --validation 40 --losses softmax -- --lr 0.2    # tuning, on training characters

Lists come from data/omniglot.py's preparer (train: images_background_small1; test: the alphabets
of images_background_small2 that small1 lacks). Each run trains with train.py --config RECIPE (the
recipes/ files: recipes/omniglot/<loss>.yaml for the table's rows), evaluates in this process as
eval.py does (engine/evaluate.py; the report in the run's eval.log, the record in its metrics.jsonl),
draws its curves (evaluation/plot.py) and prints one JSON line. Runs of the table are appended to
bench/results/omniglot.jsonl.

--validation N is for choosing a recipe without looking at the test alphabets: whole alphabets of
small1 (smallest first) are held out until at least N characters are, the network trains on the
remaining small1 characters and is evaluated on the held-out ones. Those runs go to
bench/results/omniglot-tuning.jsonl instead. Flags after `--` go to train.py after the recipe's,
so they override it.

--finetune is the original example's procedure for pair losses: the softmax recipe first (or the
checkpoint --pretrained names), then each of --losses finetuned from it (recipes/omniglot/finetune.yaml
laid over the loss's recipe), tagged "ft".

--rotated_classes adds each training character rotated by 90, 180 and 270 degrees as three new
classes (written as new images under the data directory), which is known to help on Omniglot;
--mirrored_classes adds the mirror image of every class (rotated ones included) the same way.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from cli.runtime import run_cli
from utility.errors import UserError

SHARED = REPO.parent / "shared" / "data" / "omniglot"
DEFAULT_SMALL1 = SHARED / "images_background_small1.zip"
DEFAULT_SMALL2 = SHARED / "images_background_small2.zip"
RESULTS = REPO / "bench" / "results" / "omniglot.jsonl"
TUNING_RESULTS = REPO / "bench" / "results" / "omniglot-tuning.jsonl"
ROTATIONS = (90, 180, 270)
# Lake et al.'s one-shot task on the test alphabets: 20 characters of one alphabet, one drawing of each as the
# support, one other drawing of each to classify (engine/evaluate.py's episodes; alphabets with fewer than 20
# characters are left out and named in eval.log).
ONE_SHOT_FLAGS = ("--episodes=1000", "--ways=20", "--shots=1", "--queries_per_class=1", "--within_alphabet=True")
FIGURES = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "nmi", "few_shot_error", "few_shot_ci95",
           "recall@1_most_uncertain_fifth", "recall@1_least_uncertain_fifth")  # the last two: --uncertainty models

# The recipes (recipes/, read by train.py --config): one per loss of the table over the shared line-drawing
# settings (recipes/omniglot/common.yaml), the finetuning overlay, --quick's recipe.
RECIPE_DIR = REPO / "recipes" / "omniglot"
FINETUNE_RECIPE = RECIPE_DIR / "finetune.yaml"
QUICK_RECIPE = REPO / "recipes" / "omniglot_quick.yaml"
TABLE_LOSSES = ("softmax", "arcmargin", "batchhardtripletloss", "tripletloss", "quadrupletloss", "emlloss",
                "npairsloss", "cosface", "rankedlistloss", "multisimilarityloss", "marginloss", "contrastiveloss",
                "circleloss", "supconloss", "proxyanchorloss", "proxyncaloss", "subcenterarcface", "softtripleloss",
                "crankedloss", "uncertaintytriplet")


def loss_recipe(loss):
    """The table's recipe file of `loss`."""
    return RECIPE_DIR / f"{loss}.yaml"


def hold_out_alphabets(train_entries, min_characters):
    """Split (path, label) entries of small1 by alphabet: whole alphabets, smallest first (ties by
    name), are held out until at least min_characters characters are. Returns (kept, held_out)."""
    from data.omniglot import alphabet_of, character_of

    characters = {}
    for path, _ in train_entries:
        characters.setdefault(alphabet_of(path), set()).add(character_of(path))
    held = set()
    count = 0
    for alphabet in sorted(characters, key=lambda a: (len(characters[a]), a)):
        if count >= min_characters:
            break
        held.add(alphabet)
        count += len(characters[alphabet])
    if len(held) == len(characters):
        raise UserError(f"--validation {min_characters} would hold out every alphabet of small1 "
                        f"({count} characters): nothing left to train on")
    kept = [(p, label) for p, label in train_entries if alphabet_of(p) not in held]
    return kept, [(p, label) for p, label in train_entries if alphabet_of(p) in held]


def relabel(entries, first_label=0):
    """Labels renumbered first_label.. in sorted order of the old labels."""
    old = sorted({label for _, label in entries})
    new = {label: first_label + i for i, label in enumerate(old)}
    return [(path, new[label]) for path, label in entries]


def add_rotated_classes(entries, data_dir):
    """Each character rotated by 90/180/270 degrees as new classes; the images are written under
    data_dir/rotated/<angle>/<path>. Returns the entries followed by the rotated ones."""
    import cv2

    out = list(entries)
    for angle in ROTATIONS:
        out += _transformed_class(entries, data_dir, f"rotated/{angle}", lambda image: cv2.rotate(image, _CV2_ROTATIONS[angle]),
                                  first_label=len({label for _, label in out}))
    return out


def add_mirrored_classes(entries, data_dir):
    """Each class mirrored left-right as a new class (a mirrored character is another character);
    the images are written under data_dir/mirrored/<path>. Returns the entries followed by the mirrored ones."""
    import cv2

    return list(entries) + _transformed_class(entries, data_dir, "mirrored", lambda image: cv2.flip(image, 1),
                                              first_label=len({label for _, label in entries}))


def _transformed_class(entries, data_dir, folder, transform, first_label):
    """(folder/path, label + first_label) for each entry, the transformed image written once."""
    import cv2

    out = []
    for path, label in entries:
        target_path = f"{folder}/{path}"
        target = Path(data_dir) / target_path
        if not target.exists():
            image = cv2.imread(str(Path(data_dir) / path), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise UserError(f"cannot read {Path(data_dir) / path}")
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), transform(image))
        out.append((target_path, label + first_label))
    return out


_CV2_ROTATIONS = {90: 0, 180: 1, 270: 2}  # cv2.ROTATE_90_CLOCKWISE, ROTATE_180, ROTATE_90_COUNTERCLOCKWISE


def prepare_lists(small1, small2, data_dir, validation=0, rotated_classes=False, mirrored_classes=False):
    """Unpack the split with data/omniglot.py's preparer and write the lists of this run.

    Returns (train_list, eval_list, summary). With validation > 0 the evaluation list is held-out
    alphabets of small1 and the test alphabets are not listed at all.
    """
    from data.omniglot import prepare_omniglot, write_list
    from reader.image_list import read_image_list

    data_dir, train_list, test_list = prepare_omniglot(small1, small2, data_dir)
    train = read_image_list(train_list, data_dir, check_files=False)
    entries = [(os.path.relpath(p, data_dir), int(label)) for p, label in zip(train.paths, train.labels)]
    summary = {}
    if validation > 0:
        kept, held = hold_out_alphabets(entries, validation)
        entries = relabel(kept)
        held = relabel(held, first_label=len({label for _, label in entries}))
        test_list = os.path.join(data_dir, f"validation{validation}.txt")
        write_list(test_list, held)
        summary["validation_characters"] = len({label for _, label in held})
    if rotated_classes:
        entries = add_rotated_classes(entries, data_dir)
    if mirrored_classes:
        entries = add_mirrored_classes(entries, data_dir)
    if validation > 0 or rotated_classes or mirrored_classes:
        name = "train" + (f"-without-validation{validation}" if validation > 0 else "") + \
               ("-rotated" if rotated_classes else "") + ("-mirrored" if mirrored_classes else "")
        train_list = os.path.join(data_dir, f"{name}.txt")
        write_list(train_list, entries)
    summary["train_classes"] = len({label for _, label in entries})
    return train_list, test_list, summary


def train_command(recipe, data_dir, train_list, eval_list, run_dir, extra):
    flags = [f"--config={_relative(recipe)}", *extra, f"--data_dir={data_dir}", f"--train_list={train_list}",
             f"--val_list={eval_list}", f"--model_save_dir={run_dir}"]
    return [sys.executable, "train.py", *flags]


def run_one(recipe, lists, data_dir, output_dir, extra, tag="", one_shot=True):
    """Train with `recipe` (and `extra` flags over it), evaluate (`one_shot`: with the one-shot episodes) and plot
    one run; return its JSON record."""
    from cli.args import parse_args
    from evaluation.plot import plot_training

    train_list, eval_list = lists
    flags = parse_args("train", [f"--config={recipe}", *extra])
    model, loss = flags.model, flags.loss_name
    run_dir = (Path(output_dir) / f"{model}-{loss}{'-' + tag if tag else ''}").resolve()  # train.py runs in REPO
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("log.jsonl", "metrics.jsonl"):
        (run_dir / stale).unlink(missing_ok=True)
    train_cmd = train_command(recipe, data_dir, train_list, eval_list, str(run_dir), extra)
    start = time.time()
    _run(train_cmd, run_dir / "train.log")
    checkpoint = run_dir / model / "latest"
    processes = _training_processes(run_dir / "log.jsonl")
    metrics = evaluate(checkpoint, data_dir, eval_list, run_dir, one_shot=one_shot)
    wall = time.time() - start
    plot_training(run_dir / "log.jsonl", run_dir / "curves.png")
    record = {"model": model, "loss": loss, "image_shape": ",".join(map(str, flags.image_shape)),
              "iterations": flags.total_iter_num, "processes": processes, "wall_s": round(wall, 1),
              "recipe": _relative(recipe),
              **{key: metrics[key] for key in FIGURES if metrics.get(key) is not None},
              "checkpoint": str(checkpoint.resolve()), "command": shlex.join(train_cmd[1:])}
    return record


def evaluate(checkpoint, data_dir, eval_list, run_dir, one_shot=False):
    """eval.py's figures of the checkpoint on the evaluation list (with `one_shot`, also ONE_SHOT_FLAGS'
    episodes), computed in this process; the report goes to run_dir/eval.log and the record to
    run_dir/metrics.jsonl, as eval.py --metrics_out writes it."""
    from contextlib import redirect_stdout

    from cli.config import resolve
    from engine.evaluate import evaluate_checkpoint
    from evaluation.report import append_record, print_report

    with open(run_dir / "eval.log", "w") as log, redirect_stdout(log):
        config = resolve("eval", [f"--pretrained_model={checkpoint}", f"--data_dir={data_dir}",
                                  f"--val_list={eval_list}", *(ONE_SHOT_FLAGS if one_shot else ())])
        results = evaluate_checkpoint(config)
        print_report(results, config.recall_k)
        append_record(run_dir / "metrics.jsonl", config.pretrained_model, config.model, results)
    return results


def _training_processes(log_jsonl):
    """How many processes trained the run (train.py relaunches itself on several: cli/relaunch.py), as its
    last progress record in log.jsonl says (1 for logs written before the records carried it)."""
    from evaluation.plot import read_records

    progress = [record for record in read_records(log_jsonl) if "img_per_s" in record]
    return progress[-1].get("processes", 1) if progress else 1


def _relative(path):
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _run(command, log_path):
    with open(log_path, "w") as log:
        done = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "".join(open(log_path).readlines()[-5:]).strip()
        raise UserError(f"{shlex.join(command[1:3])} ... failed (exit {done.returncode}), see {log_path}:\n{tail}")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="flags after -- go to train.py")
    parser.add_argument("--small1", default=str(DEFAULT_SMALL1), help="images_background_small1.zip (training alphabets)")
    parser.add_argument("--small2", default=str(DEFAULT_SMALL2), help="images_background_small2.zip (test alphabets)")
    parser.add_argument("--data_dir", default=str(REPO / "data" / "omniglot"), help="where the images are unpacked")
    parser.add_argument("--output_dir", default=str(REPO / "output" / "omniglot"), help="one folder per run")
    parser.add_argument("--quick", action="store_true",
                        help=f"one run: {_relative(QUICK_RECIPE)} with --rotated_classes")
    parser.add_argument("--recipe", default=None, help="one run of this recipe file (e.g. recipes/omniglot_best.yaml)")
    parser.add_argument("--losses", default=",".join(TABLE_LOSSES),
                        help=f"comma-separated losses of the table, each with its recipe in {_relative(RECIPE_DIR)}/")
    parser.add_argument("--models", default="", help="comma-separated models (default: the recipe's, ResNet18)")
    parser.add_argument("--validation", type=int, default=0,
                        help="hold out whole small1 alphabets (at least N characters) and evaluate on them")
    parser.add_argument("--rotated_classes", action="store_true", help="add 90/180/270-degree rotations as new classes")
    parser.add_argument("--mirrored_classes", action="store_true", help="add the mirror image of every class as a new class")
    parser.add_argument("--finetune", action="store_true",
                        help="train softmax first (or take --pretrained), then finetune each loss from it")
    parser.add_argument("--pretrained", default=None, help="with --finetune: the checkpoint to finetune from")
    parser.add_argument("--tag", default="", help="suffix of the run folders, and recorded")
    parser.add_argument("--results", default=None, help="append the JSON lines here (default: bench/results/"
                        "omniglot.jsonl, or omniglot-tuning.jsonl with --validation)")
    parser.add_argument("--reevaluate", action="store_true",
                        help="evaluate the recorded runs' checkpoints again for the figures they lack (one-shot)")
    parser.add_argument("--prepare_only", action="store_true", help="write the lists, print their paths, stop")
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser.parse_args(own)
    args.extra = extra
    args.losses = [name for name in args.losses.split(",") if name]
    args.models = [name for name in args.models.split(",") if name]
    args.recipes = [loss_recipe(loss) for loss in args.losses]
    if args.quick:
        args.recipe, args.rotated_classes, args.tag = str(QUICK_RECIPE), True, args.tag or "quick"
    if args.recipe:
        if args.finetune:
            raise UserError("--finetune runs the table's recipes: give --losses, not --recipe or --quick")
        args.recipes = [Path(args.recipe)]
    unknown = [str(recipe) for recipe in args.recipes if not recipe.is_file()]
    if unknown:
        raise UserError(f"no recipe {', '.join(unknown)}; the table's losses: {', '.join(TABLE_LOSSES)}")
    if not args.recipes:
        raise UserError("--losses needs at least one name")
    if args.pretrained and not args.finetune:
        raise UserError("--pretrained goes with --finetune")
    if args.validation < 0:
        raise UserError(f"--validation must be 0 or more, got {args.validation}")
    if args.results is None:
        args.results = str(TUNING_RESULTS if args.validation else RESULTS)
    return args


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else list(argv))
    train_list, eval_list, summary = prepare_lists(args.small1, args.small2, args.data_dir,
                                                   args.validation, args.rotated_classes, args.mirrored_classes)
    print(json.dumps({"train_list": train_list, "eval_list": eval_list, **summary}), flush=True)
    if args.prepare_only:
        return
    if args.reevaluate:
        return reevaluate(args.results, args.data_dir, eval_list)
    lists = (train_list, eval_list)
    one_shot = not args.validation  # the held-out alphabets may have no 20 characters
    for model in args.models or [None]:
        chosen = [f"--model={model}"] if model else []
        extra, tag, base = [*chosen, *args.extra], args.tag, None
        if args.finetune:
            base = args.pretrained or _write(run_one(loss_recipe("softmax"), lists, args.data_dir, args.output_dir,
                                                     extra, args.tag, one_shot), args, summary)["checkpoint"]
            extra = [f"--pretrained_model={base}", *_finetune_flags(), *extra]
            tag = "-".join(filter(None, ["ft", args.tag]))
        for recipe in args.recipes:
            record = run_one(recipe, lists, args.data_dir, args.output_dir, extra, tag, one_shot)
            if base:
                record["finetuned_from"] = base
            _write(record, args, summary, tag)


def reevaluate(results, data_dir, eval_list):
    """Give the recorded test-alphabet runs the figures they lack (the one-shot error, recorded since issue 30)
    by evaluating their checkpoints again where they still exist; the results file is rewritten in place."""
    from utility.files import write_text

    with open(results) as f:
        records = [json.loads(line) for line in f if line.strip()]
    for record in records:
        if record.get("evaluated_on") != "test alphabets" or record.get("few_shot_error") is not None:
            continue
        checkpoint = Path(record["checkpoint"])
        if not checkpoint.is_dir():
            print(f"{record['model']} {record['loss']}: checkpoint {checkpoint} is gone, left as it is", flush=True)
            continue
        metrics = evaluate(checkpoint, data_dir, eval_list, checkpoint.parents[1], one_shot=True)
        if abs(metrics["recall@1"] - record["recall@1"]) > 1e-6:
            raise UserError(f"{checkpoint} now gives Recall@1 {metrics['recall@1']:.4f}, recorded "
                            f"{record['recall@1']:.4f}: not the recorded run's evaluation, left unchanged")
        record.update({key: metrics[key] for key in FIGURES if record.get(key) is None and metrics.get(key) is not None})
        print(json.dumps(record), flush=True)
    write_text(results, "".join(json.dumps(record) + "\n" for record in records))


def _finetune_flags():
    """The finetuning overlay (recipes/omniglot/finetune.yaml) as flags laid over each loss's recipe."""
    from cli.recipes import load_recipe

    return [f"--{name}={value}" for name, value in load_recipe(str(FINETUNE_RECIPE)).items()]


def _write(record, args, summary, tag=None):
    """Complete a run's record, print it and append it to the results file; returns it."""
    record.update(summary)
    tag = args.tag if tag is None else tag
    if tag:
        record["tag"] = tag
    if args.validation:
        record["evaluated_on"] = f"validation: {summary['validation_characters']} held-out small1 characters"
    else:
        record["evaluated_on"] = "test alphabets"
    if args.rotated_classes:
        record["rotated_classes"] = True
    if args.mirrored_classes:
        record["mirrored_classes"] = True
    line = json.dumps(record)
    print(line, flush=True)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(line + "\n")
    return record


if __name__ == "__main__":
    run_cli(main)
