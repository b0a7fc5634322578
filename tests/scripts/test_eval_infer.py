"""eval.py and infer.py on a checkpoint made by train.py: metrics, dumps, export, bad images."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

import eval as eval_script
import infer
from evaluation.evaluator import Evaluator
from utility.errors import UserError

END_TEST = re.compile(r"^End test, test_loss (\S+), test recall (\S+)$", re.M)


def data_flags(trained, batch=10):
    # --test_batch_size=10 does not divide the 24 evaluation images: the last batch is partial.
    return [f"--pretrained_model={trained['checkpoint']}", f"--data_dir={trained['data_dir']}",
            f"--val_list={trained['val_list']}", "--num_workers=0", f"--test_batch_size={batch}"]


def run_infer(trained, out_dir, *extra):
    infer.main(data_flags(trained) + [f"--output_dir={out_dir}", *extra])
    return read_dump(out_dir)


def read_dump(out_dir):
    return (np.load(os.path.join(out_dir, "features.npy")), np.load(os.path.join(out_dir, "labels.npy")),
            open(os.path.join(out_dir, "paths.txt")).read().splitlines())


@pytest.fixture(scope="module")
def dump(trained, built_once):
    """infer.py's (features, labels, paths) of the val list with the trained checkpoint, and its export of the
    model to dump[3]; read, never written."""
    def build(out):
        import paddle

        run_infer(trained, str(out / "dump"), f"--export_model={out / 'exported'}")
        paddle.disable_static()

    out = built_once("eval-infer-dump", build)
    return (*read_dump(out / "dump"), out / "exported")


@pytest.fixture(scope="module")
def evaluated(trained, built_once):
    """(printed lines, metrics record) of eval.py on the val list with the trained checkpoint."""
    def build(out):
        import contextlib
        import io

        import paddle

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # --test_batch_size=7: not that of the dump
            eval_script.main(data_flags(trained, batch=7) + [f"--metrics_out={out / 'm.jsonl'}"])
        paddle.disable_static()
        (out / "printed.txt").write_text(printed.getvalue())

    out = built_once("eval-infer-evaluated", build)
    return (out / "printed.txt").read_text(), json.loads((out / "m.jsonl").read_text())


def test_eval_reports_metrics_of_the_whole_list(evaluated):
    out, record = evaluated
    assert "From the checkpoint's training run: --model=ResNet18 --embedding_size=16 --image_shape=3,32,32" in out
    (loss, recall), = END_TEST.findall(out)
    assert float(loss) >= 0
    assert record["num_queries"] == 24
    assert record["recall@1"] == pytest.approx(float(recall), abs=1e-5)
    for k in (1, 2, 4, 8):
        assert re.search(rf"^Recall@{k}: {record[f'recall@{k}']:.4f}$", out, re.M)
    assert 0 <= record["map@r"] <= 1 and 0 <= record["nmi"] <= 1
    assert record["recall@1"] <= record["recall@2"] <= record["recall@4"] <= record["recall@8"]
    # The most confused pairs of classes (4 classes of 6 images), named by their folders.
    errors, pairs = round((1 - record["recall@1"]) * 24), record["confused_pairs"]
    assert sum(pair["errors"] for pair in pairs) <= errors and (errors == 0) == (pairs == [])
    for pair in pairs:
        a, b = pair["classes"]
        assert a < b and pair["names"] == [f"c{a}", f"c{b}"] and pair["queries"] == 12
        assert re.search(rf"^ +{pair['errors']} of 12 +{a} c{a}  <->  {b} c{b}$", out, re.M)


def test_infer_features_reproduce_eval_recall(trained, dump, evaluated):
    features, labels, paths, _ = dump
    _, record = evaluated
    assert features.shape == (24, 16) and features.dtype == np.float32
    with open(trained["val_list"]) as f:
        listed = [line.split() for line in f]
    assert [os.path.relpath(p, trained["data_dir"]) for p in paths] == [path for path, _ in listed]
    assert labels.tolist() == [int(label) for _, label in listed]
    assert Evaluator(["recall_at_k"], ks=(1,))(features, labels)["recall@1"] == pytest.approx(record["recall@1"])


def test_exported_model_gives_the_checkpoint_features(trained, dump, tmp_path):
    want, _, _, exported = dump
    infer.main([f"--inference_model={exported}", f"--data_dir={trained['data_dir']}",
                f"--infer_list={trained['val_list']}", "--num_workers=0", f"--output_dir={tmp_path / 'b'}"])
    got = np.load(tmp_path / "b" / "features.npy")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_an_exported_model_keeps_its_ink_crop(trained, dump, tmp_path):
    exported = tmp_path / "exported"
    want, _, _ = run_infer(trained, str(tmp_path / "a"), f"--export_model={exported}", "--ink_crop=True")
    info = json.loads((exported / "preprocess.json").read_text())
    assert info["ink_crop"] is True and info["ink_fraction"] == 0.8 and "square around the ink" in info["input"]
    import paddle
    paddle.disable_static()
    infer.main([f"--inference_model={exported}", f"--data_dir={trained['data_dir']}",
                f"--infer_list={trained['val_list']}", "--num_workers=0", f"--output_dir={tmp_path / 'b'}"])
    np.testing.assert_allclose(np.load(tmp_path / "b" / "features.npy"), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    without, _, _, _ = dump
    assert not np.allclose(without, want, atol=1e-3)


def test_infer_on_an_unlabelled_list_prints_features(trained, tmp_path, capsys):
    unlabelled = tmp_path / "paths.txt"
    with open(trained["val_list"]) as f:
        unlabelled.write_text("".join(line.split()[0] + "\n" for line in list(f)[:10]))
    count = len(unlabelled.read_text().splitlines())
    features, labels, _ = run_infer(trained, str(tmp_path / "dump"), f"--infer_list={unlabelled}",
                                    "--print_features=True")
    assert features.shape == (count, 16) and (labels == -1).all()
    assert len(re.findall(r"^Test-\d+-feature: \[", capsys.readouterr().out, re.M)) == count


def test_separate_query_and_gallery_and_the_picture(trained, tmp_path, capsys):
    with open(trained["val_list"]) as f:
        lines = f.readlines()
    (tmp_path / "q.txt").write_text("".join(lines[::6]))
    (tmp_path / "g.txt").write_text("".join(l for i, l in enumerate(lines) if i % 6))
    picture = tmp_path / "retrieval.png"
    eval_script.main(data_flags(trained) + [f"--query_list={tmp_path / 'q.txt'}", f"--gallery_list={tmp_path / 'g.txt'}",
                                            f"--metrics_out={tmp_path / 'm.jsonl'}", "--visualize=3",
                                            f"--visualize_file={picture}"])
    assert json.loads((tmp_path / "m.jsonl").read_text())["num_queries"] == 4
    with Image.open(picture) as image:
        assert image.width > image.height > 0


def test_a_corrupt_image_stops_eval_unless_skipped(trained, tmp_path, capsys):
    with open(trained["val_list"]) as f:
        lines = f.readlines()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad_list = tmp_path / "val.txt"
    bad_list.write_text(f"{broken} 101\n" + "".join(os.path.join(trained["data_dir"], l) for l in lines))
    flags = data_flags(trained) + [f"--val_list={bad_list}", "--data_dir=/"]
    with pytest.raises(UserError, match="broken.png"):
        eval_script.main(flags)
    eval_script.main(flags + ["--skip_bad_images=True", f"--metrics_out={tmp_path / 'm.jsonl'}"])
    assert json.loads((tmp_path / "m.jsonl").read_text())["num_queries"] == 24


def test_eval_needs_a_checkpoint_that_fits(trained, tmp_path):
    with pytest.raises(UserError, match="--pretrained_model"):
        eval_script.main([f"--val_list={trained['val_list']}", f"--data_dir={trained['data_dir']}"])
    with pytest.raises(UserError, match="does not fit this network"):
        eval_script.main(data_flags(trained) + ["--model=ResNet34"])


def test_one_class_is_a_clear_error_and_nmi_can_be_skipped(trained, tmp_path, capsys):
    with open(trained["val_list"]) as f:
        lines = f.readlines()
    one_class = tmp_path / "one.txt"
    one_class.write_text("".join(l for l in lines if l.split()[1] == "101"))
    with pytest.raises(UserError, match="single class"):
        eval_script.main(data_flags(trained) + [f"--val_list={one_class}"])
    eval_script.main(data_flags(trained) + ["--nmi=False", f"--metrics_out={tmp_path / 'm.jsonl'}"])
    assert "nmi" not in json.loads((tmp_path / "m.jsonl").read_text())
    assert "NMI:" not in capsys.readouterr().out


def test_a_typed_setting_that_differs_from_the_checkpoint_is_pointed_out(trained, capsys):
    with pytest.raises(UserError, match="does not fit this network"):
        eval_script.main(data_flags(trained) + ["--embedding_size=8"])
    assert "Note: the checkpoint's training run used --embedding_size=16, you gave 8" in capsys.readouterr().out


def test_two_processes_embed_shares_and_merge_them_in_list_order(trained, dump, tmp_path):
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    want, want_labels, want_paths, _ = dump
    result = subprocess.run(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
         str(tmp_path / "logs"), os.path.join(repo, "infer.py"), *data_flags(trained, batch=5),
         f"--output_dir={tmp_path / 'two'}"], cwd=repo, capture_output=True, text=True, timeout=300)
    leader_log = (tmp_path / "logs" / "workerlog.0").read_text()
    assert result.returncode == 0, leader_log[-2000:]
    assert "Gathered the embeddings of 2 processes: 12, 12 images" in leader_log
    got = np.load(tmp_path / "two" / "features.npy")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert np.load(tmp_path / "two" / "labels.npy").tolist() == want_labels.tolist()
    assert (tmp_path / "two" / "paths.txt").read_text().splitlines() == want_paths
    assert sorted(os.listdir(tmp_path / "two")) == ["features.npy", "fingerprint.json", "labels.npy",
                                                     "paths.txt"]  # hand-over removed


def test_reid_protocol_and_verification_threshold_end_to_end(trained, dump, tmp_path, capsys):
    with open(trained["val_list"]) as f:
        lines = [line.split() for line in f]
    with_cameras = [f"{path} {label} {1 + i % 3}\n" for i, (path, label) in enumerate(lines)]
    (tmp_path / "q.txt").write_text("".join(with_cameras[::6]))
    (tmp_path / "g.txt").write_text("".join(l for i, l in enumerate(with_cameras) if i % 6))
    picture = tmp_path / "threshold.png"
    eval_script.main(data_flags(trained) + ["--with_camera=True", f"--query_list={tmp_path / 'q.txt'}",
                                            f"--gallery_list={tmp_path / 'g.txt'}", f"--threshold_plot={picture}",
                                            f"--metrics_out={tmp_path / 'm.jsonl'}"])
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "m.jsonl").read_text())
    assert re.search(rf"^Re-identification: mAP {record['map']:.4f}, CMC@1 {record['cmc@1']:.4f}", out, re.M)
    assert record["num_queries"] == 4 and 0 <= record["map"] <= 1 and record["cmc@1"] <= record["cmc@5"]
    assert 0 <= record["threshold_accuracy"] <= 1
    assert (record["num_positive_pairs"], record["num_negative_pairs"]) == (4 * 15, 24 * 23 // 2 - 4 * 15)
    assert picture.stat().st_size > 0

    features, labels, _, _ = dump
    cameras = np.array([1 + i % 3 for i in range(len(labels))])
    query, gallery = np.arange(len(labels)) % 6 == 0, np.arange(len(labels)) % 6 != 0
    want = Evaluator(["map"])(features[gallery], labels[gallery], features[query], labels[query], cameras[gallery],
                              cameras[query])
    assert record["map"] == pytest.approx(want["map"], abs=1e-5)


def test_an_evaluation_list_with_a_path_twice_is_refused(trained, tmp_path):
    with open(trained["val_list"]) as f:
        lines = f.readlines()
    doubled = tmp_path / "doubled.txt"
    doubled.write_text("".join(lines + lines[:1]))
    with pytest.raises(UserError, match="listed more than once"):
        eval_script.main(data_flags(trained) + [f"--val_list={doubled}"])


def test_few_shot_episodes_and_post_processing_end_to_end(trained, tmp_path, capsys):
    # Absolute paths under --data_dir=/: the folder 2 levels above each image is the tiny set's root, one
    # "alphabet" of 4 classes; the episodes need 3 of them.
    with open(trained["val_list"]) as f:
        lines = [os.path.join(trained["data_dir"], line) for line in f]
    (tmp_path / "val.txt").write_text("".join(lines))
    flags = data_flags(trained) + [f"--val_list={tmp_path / 'val.txt'}", "--data_dir=/", "--episodes=20",
                                   "--ways=3", "--queries_per_class=1", "--within_alphabet=True"]
    with pytest.raises(UserError, match="need a group with 5 classes"):
        eval_script.main(flags + ["--ways=5"])  # before any image is embedded
    eval_script.main(flags + ["--database_augmentation=2,3", "--query_expansion=2,3",
                              f"--metrics_out={tmp_path / 'm.jsonl'}"])
    record = json.loads((tmp_path / "m.jsonl").read_text())
    assert 0 <= record["few_shot_error"] <= 1 and record["few_shot_ci95"] >= 0
    assert record["few_shot_task"] == "3-way 1-shot, within one group, queries per class: 1, 20 episodes, seed 0"
    assert record["post_processing"] == ("database augmentation k=2 alpha=3, then alpha query expansion "
                                         "k=2 alpha=3")
    out = capsys.readouterr().out
    assert f"Few-shot error: {record['few_shot_error']:.4f} +- " in out
    assert "(Recall@K, MAP@R and R-precision after database augmentation" in out


def test_paired_drawer_episodes_end_to_end(trained, tmp_path):
    # The held-out images copied as alphabet/cLABEL/LABEL_DRAWER.png: one alphabet, 4 classes by 6 drawers.
    import shutil

    lines = []
    with open(trained["val_list"]) as f:
        for line in f:
            path, label = line.split()
            drawer = int(os.path.splitext(os.path.basename(path))[0]) + 1
            copy = f"alphabet/c{label}/{label}_{drawer:02d}.png"
            os.makedirs(tmp_path / os.path.dirname(copy), exist_ok=True)
            shutil.copy(os.path.join(trained["data_dir"], path), tmp_path / copy)
            lines.append(f"{copy} {label}\n")
    (tmp_path / "val.txt").write_text("".join(lines))
    flags = data_flags(trained) + [f"--val_list={tmp_path / 'val.txt'}", f"--data_dir={tmp_path}", "--episodes=20",
                                   "--ways=3", "--queries_per_class=1", "--within_alphabet=True", "--paired_drawers"]
    with pytest.raises(UserError, match="--paired_drawers: .*c101/0.png: no drawer number"):  # before embedding
        eval_script.main(data_flags(trained) + ["--episodes=20", "--ways=3", "--queries_per_class=1",
                                                "--paired_drawers"])
    eval_script.main(flags + [f"--metrics_out={tmp_path / 'm.jsonl'}"])
    record = json.loads((tmp_path / "m.jsonl").read_text())
    assert record["few_shot_task"].startswith("3-way 1-shot, within one group, support and queries by different")
    assert 0 <= record["few_shot_error"] <= 1  # its computation: tests/evaluation/test_fewshot.py
