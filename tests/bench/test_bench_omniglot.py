"""bench/omniglot.py: list preparation and argument handling on tiny fake zips (no training)."""
import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from utility.errors import UserError

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_omniglot", REPO / "bench" / "omniglot.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

SMALL1 = {"Greek": 3, "Latin": 2, "Korean": 4}   # alphabet: characters
SMALL2 = {"Greek": 3, "Tagalog": 2, "Sanskrit": 1}
DRAWINGS = 2


def _png(value):
    image = np.full((10, 10), 255, dtype=np.uint8)
    image[0, :3] = value % 200        # an asymmetric mark, so rotations differ
    return cv2.imencode(".png", image)[1].tobytes()


def _zip(tmp_path, set_name, alphabets):
    path = tmp_path / f"{set_name}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for a, (alphabet, characters) in enumerate(alphabets.items()):
            for c in range(1, characters + 1):
                for d in range(1, DRAWINGS + 1):
                    archive.writestr(f"{set_name}/{alphabet}/character{c:02d}/{d:02d}.png", _png(a * 10 + c))
    return path


@pytest.fixture
def zips(tmp_path):
    return _zip(tmp_path, "images_background_small1", SMALL1), _zip(tmp_path, "images_background_small2", SMALL2)


def _read(path):
    return [(line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1])) for line in Path(path).read_text().splitlines()]


def test_test_split_is_data_omniglot_s(zips, tmp_path):
    train_list, eval_list, summary = bench.prepare_lists(*zips, str(tmp_path / "d"))
    assert Path(train_list).name == "train.txt" and Path(eval_list).name == "val.txt"
    assert summary == {"train_classes": 9}
    assert {p.split("/")[1] for p, _ in _read(eval_list)} == {"Tagalog", "Sanskrit"}


def test_validation_holds_out_whole_small1_alphabets_and_never_lists_the_test_alphabets(zips, tmp_path):
    data_dir = tmp_path / "d"
    train_list, eval_list, summary = bench.prepare_lists(*zips, str(data_dir), validation=3)
    train, held = _read(train_list), _read(eval_list)
    # Smallest alphabet first: Latin (2 characters), then Greek (3) to reach 3 characters.
    assert {p.split("/")[1] for p, _ in held} == {"Latin", "Greek"}
    assert {p.split("/")[1] for p, _ in train} == {"Korean"}
    assert summary == {"validation_characters": 5, "train_classes": 4}
    assert sorted({label for _, label in train}) == [0, 1, 2, 3]
    assert sorted({label for _, label in held}) == [4, 5, 6, 7, 8]
    assert all(p.startswith("images_background_small1/") for p, _ in train + held)
    assert all((data_dir / p).is_file() for p, _ in train + held)
    with pytest.raises(UserError, match="nothing left to train on"):
        bench.prepare_lists(*zips, str(tmp_path / "e"), validation=9)


def test_rotated_classes_are_new_classes_with_rotated_images(zips, tmp_path):
    data_dir = tmp_path / "d"
    train_list, _, summary = bench.prepare_lists(*zips, str(data_dir), validation=2, rotated_classes=True)
    train = _read(train_list)
    assert summary["train_classes"] == 4 * 7 and len(train) == 4 * 7 * DRAWINGS
    original = dict(train[:7 * DRAWINGS])
    for k, angle in enumerate(bench.ROTATIONS, start=1):
        part = train[k * 7 * DRAWINGS:(k + 1) * 7 * DRAWINGS]
        for (path, label), (source, source_label) in zip(part, original.items()):
            assert path == f"rotated/{angle}/{source}" and label == source_label + 7 * k
            image = cv2.imread(str(data_dir / path), cv2.IMREAD_GRAYSCALE)
            expected = np.rot90(cv2.imread(str(data_dir / source), cv2.IMREAD_GRAYSCALE), -angle // 90)
            assert np.array_equal(image, expected)


def test_arguments(tmp_path):
    args = bench.parse(["--quick", "--validation", "40", "--", "--lr", "0.2"])
    assert args.recipes == [bench.QUICK_RECIPE] and args.models == []
    assert args.extra == ["--lr", "0.2"]  # laid over the recipe by train.py's command line
    assert args.rotated_classes and args.tag == "quick"
    assert args.results.endswith("omniglot-tuning.jsonl")
    args = bench.parse(["--losses", "softmax,emlloss", "--models", "ResNet18,ResNet34"])
    assert args.recipes == [bench.loss_recipe("softmax"), bench.loss_recipe("emlloss")]
    assert args.models == ["ResNet18", "ResNet34"]
    assert args.results.endswith("bench/results/omniglot.jsonl") and args.extra == [] and not args.rotated_classes
    assert len(bench.parse([]).recipes) == len(bench.TABLE_LOSSES)
    assert bench.parse(["--recipe", "recipes/omniglot_best.yaml"]).recipes == [Path("recipes/omniglot_best.yaml")]
    for bad, message in ((["--losses", "nosuchloss"], "no recipe"), (["--losses", ","], "at least one"),
                         (["--validation", "-1"], "validation"), (["--quick", "--finetune"], "--finetune")):
        with pytest.raises(UserError, match=message):
            bench.parse(bad)


def test_train_command_puts_the_user_s_flags_after_the_recipe():
    recipe = bench.loss_recipe("softmax")
    command = bench.train_command(recipe, "D", "T", "V", "OUT", ["--lr", "0.3", "--total_iter_num=7"])
    assert command[:3] == [sys.executable, "train.py", "--config=recipes/omniglot/softmax.yaml"]  # train.py runs in the repo
    assert "--val_list=V" in command and "--model_save_dir=OUT" in command
    from cli.args import parse_args
    parsed = parse_args("train", command[2:])
    assert (parsed.lr, parsed.total_iter_num, parsed.hflip, parsed.image_shape) == (0.3, 7, False, (3, 32, 32))
    for loss in bench.TABLE_LOSSES:   # every recipe of the table is a valid train.py command line
        assert parse_args("train", bench.train_command(bench.loss_recipe(loss), "D", "T", "V", "O", [])[2:]
                          ).loss_name == loss


def test_prepare_only_prints_the_lists(zips, tmp_path, capsys):
    bench.main(["--small1", str(zips[0]), "--small2", str(zips[1]), "--data_dir", str(tmp_path / "d"),
                "--validation", "1", "--prepare_only"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["eval_list"].endswith("validation1.txt") and line["validation_characters"] == 2


def test_finetune_trains_softmax_first_then_each_loss_from_it(zips, tmp_path, monkeypatch):
    runs = []

    def fake_run(recipe, lists, data_dir, output_dir, extra, tag="", one_shot=True):
        loss = Path(recipe).stem
        runs.append((loss, list(extra), tag))
        return {"model": "ResNet18", "loss": loss, "checkpoint": f"/ckpt/{loss}"}

    monkeypatch.setattr(bench, "run_one", fake_run)
    common = ["--small1", str(zips[0]), "--small2", str(zips[1]), "--data_dir", str(tmp_path / "d"),
              "--results", str(tmp_path / "r.jsonl"), "--losses", "emlloss,npairsloss", "--finetune"]
    bench.main([*common, "--", "--seed=3"])
    assert runs[0] == ("softmax", ["--seed=3"], "")
    for (loss, extra, tag), expected in zip(runs[1:], ("emlloss", "npairsloss")):
        assert loss == expected and tag == "ft"
        assert extra == ["--pretrained_model=/ckpt/softmax", "--lr=0.001", "--warmup_iter=0", "--total_iter_num=500",
                         "--test_iter_step=500", "--save_iter_step=500", "--seed=3"]
    records = [json.loads(line) for line in open(tmp_path / "r.jsonl")]
    assert [(r["loss"], r.get("tag"), r.get("finetuned_from")) for r in records] == [
        ("softmax", None, None), ("emlloss", "ft", "/ckpt/softmax"), ("npairsloss", "ft", "/ckpt/softmax")]

    runs.clear()
    bench.main([*common, "--pretrained", "/given", "--tag", "x"])
    assert [(loss, extra[0], tag) for loss, extra, tag in runs] == [
        ("emlloss", "--pretrained_model=/given", "ft-x"), ("npairsloss", "--pretrained_model=/given", "ft-x")]
    with pytest.raises(UserError, match="--pretrained goes with --finetune"):
        bench.parse(["--pretrained", "/given"])


def test_mirrored_classes_double_the_rotated_ones(zips, tmp_path):
    data_dir = tmp_path / "d"
    train_list, _, summary = bench.prepare_lists(*zips, str(data_dir), validation=2, rotated_classes=True,
                                                 mirrored_classes=True)
    train = _read(train_list)
    assert train_list.endswith("-rotated-mirrored.txt")
    assert summary["train_classes"] == 8 * 7 and len(train) == 8 * 7 * DRAWINGS
    unmirrored, mirrored = train[:4 * 7 * DRAWINGS], train[4 * 7 * DRAWINGS:]
    for (path, label), (source, source_label) in zip(mirrored, unmirrored):
        assert path == f"mirrored/{source}" and label == source_label + 4 * 7
        image = cv2.imread(str(data_dir / path), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(image, cv2.imread(str(data_dir / source), cv2.IMREAD_GRAYSCALE)[:, ::-1])


def test_a_run_is_evaluated_in_process_as_eval_py_evaluates_it(trained, tmp_path, capsys):
    import eval as eval_script

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    results = bench.evaluate(trained["checkpoint"], trained["data_dir"], trained["val_list"], run_dir)
    eval_script.main([f"--pretrained_model={trained['checkpoint']}", f"--data_dir={trained['data_dir']}",
                      f"--val_list={trained['val_list']}", f"--metrics_out={tmp_path / 'eval.jsonl'}"])
    by_eval_py = json.loads((tmp_path / "eval.jsonl").read_text())
    recorded = json.loads((run_dir / "metrics.jsonl").read_text())
    assert recorded == by_eval_py
    assert {key: results[key] for key in ("recall@1", "map@r", "nmi", "num_queries")} == \
        {key: by_eval_py[key] for key in ("recall@1", "map@r", "nmi", "num_queries")}
    log = (run_dir / "eval.log").read_text()
    assert f"Recall@1: {results['recall@1']:.4f}" in log and "End test, test_loss" in log


def test_the_one_shot_flags_are_eval_py_flags():
    from cli.args import parse_args

    flags = parse_args("eval", list(bench.ONE_SHOT_FLAGS))
    assert (flags.episodes, flags.ways, flags.shots, flags.queries_per_class, flags.within_alphabet) == \
        (1000, 20, 1, 1, True)


def test_reevaluate_adds_what_a_record_lacks_after_checking_its_recall(tmp_path, monkeypatch):
    checkpoint = tmp_path / "run" / "ResNet18" / "1500"
    checkpoint.mkdir(parents=True)
    kept = {"evaluated_on": "test alphabets", "model": "ResNet18", "loss": "a", "recall@1": 0.5,
            "checkpoint": str(checkpoint)}
    gone = dict(kept, loss="b", checkpoint=str(tmp_path / "gone"))
    tuning = dict(kept, loss="c", evaluated_on="validation: 40 held-out small1 characters")
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(record) + "\n" for record in (kept, gone, tuning)))
    calls = []

    def fake_evaluate(path, data_dir, eval_list, run_dir, one_shot=False):
        calls.append((str(path), str(run_dir), one_shot))
        return {"recall@1": recall, "few_shot_error": 0.25, "few_shot_ci95": 0.01}

    monkeypatch.setattr(bench, "evaluate", fake_evaluate)
    recall = 0.4  # not the recorded run: nothing is written
    with pytest.raises(UserError, match="now gives Recall@1 0.4000, recorded 0.5000"):
        bench.reevaluate(results, "d", "val.txt")
    assert [json.loads(line) for line in results.read_text().splitlines()] == [kept, gone, tuning]
    recall = 0.5
    bench.reevaluate(results, "d", "val.txt")
    assert calls[-1] == (str(checkpoint), str(tmp_path / "run"), True)
    assert [json.loads(line) for line in results.read_text().splitlines()] == [
        dict(kept, few_shot_error=0.25, few_shot_ci95=0.01), gone, tuning]


def test_the_record_counts_the_processes_train_py_relaunched_itself_on(tmp_path):
    log = tmp_path / "log.jsonl"
    progress = {"pass": 0, "iter": 0, "img_per_s": 90.0}
    evaluation = {"pass": 0, "iter": 0, "test_recall": 0.5}
    log.write_text("".join(json.dumps(record) + "\n" for record in ({**progress, "processes": 2}, evaluation)))
    assert bench._training_processes(log) == 2
    log.write_text(json.dumps(progress) + "\n")  # a log of a version whose records did not say
    assert bench._training_processes(log) == 1
