"""evaluation/plot.py: the curves of a train.py log.jsonl."""
import json


from evaluation.plot import plot_training, read_series


def _write_log(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _progress(iteration, loss_cls=0.5):
    return {"pass": 0, "iter": iteration, "lr": 0.1 * iteration, "loss_metric": 1.0 / (iteration + 1),
            "loss_cls": loss_cls, "acc1": 0.1, "acc5": 0.5, "img_per_s": 100.0, "reader_s": 0.0, "step_s": 0.5}


def test_plot_writes_a_png_with_every_series(tmp_path):
    records = [_progress(i) for i in (0, 10, 20, 30)]
    records.insert(3, {"pass": 0, "iter": 25, "test_recall": 0.4, "train_loss_metric": 0.3})
    records.append({"pass": 0, "iter": 40, "test_recall": 0.6, "train_loss_metric": 0.2})
    log = _write_log(tmp_path / "log.jsonl", records)
    out = tmp_path / "curves.png"
    counts = plot_training(log, out)
    assert counts == {"loss_metric": 4, "loss_cls": 4, "lr": 4, "test_recall": 2}
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    series = read_series(log)
    assert series["test_recall"] == ([25, 40], [0.4, 0.6])
    assert series["lr"] == ([0, 10, 20, 30], [0.0, 1.0, 2.0, 3.0])


def test_null_loss_cls_is_left_out_and_resumed_iterations_replace_earlier_ones(tmp_path):
    records = [_progress(i, loss_cls=None) for i in (0, 10, 20)] + [_progress(10, loss_cls=None) | {"lr": 9.0}]
    log = _write_log(tmp_path / "log.jsonl", records)
    counts = plot_training(log, tmp_path / "c.png")
    assert counts == {"loss_metric": 3, "lr": 3}
    assert read_series(log)["lr"] == ([0, 10, 20], [0.0, 9.0, 2.0])
    assert (tmp_path / "c.png").exists()


def test_a_loss_that_is_zero_at_every_step_is_not_drawn(tmp_path):
    records = [_progress(i) | {"loss_metric": 0.0} for i in (0, 10, 20)]
    counts = plot_training(_write_log(tmp_path / "log.jsonl", records), tmp_path / "c.png")
    assert counts == {"loss_cls": 3, "lr": 3}


def test_damaged_lines_are_skipped_and_named(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    damaged = ['{not json', '[1, 2]', json.dumps(_progress(20))[:-9] + json.dumps(_progress(30))]  # two on one
    log.write_text("\n".join([json.dumps(_progress(0)), *damaged, json.dumps(_progress(10) | {"lr": "x"})]) + "\n")
    assert plot_training(log, tmp_path / "c.png") == {"loss_metric": 2, "loss_cls": 2, "lr": 1}
    assert f"note: skipped 3 damaged line(s) of {log}: line 2, 3, 4" in capsys.readouterr().out
