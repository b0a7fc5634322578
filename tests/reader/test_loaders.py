"""Loaders: worker processes, determinism, resuming, bad images, test-list order, static mode."""
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import reader
from reader import load_rgb, make_train_loader, read_image_list
from tests.reader_fixtures import make_dataset
from utility.errors import UserError

SHAPE = (3, 16, 16)
AUGMENT = {"color_jitter": True, "rotate": True, "random_erasing": True}


@pytest.fixture()
def dataset(tmp_path):
    list_path, data_dir = make_dataset(tmp_path, [3, 4, 3, 5, 3, 4], size=24)
    return read_image_list(list_path, data_dir)


def _train_loader(image_list, num_workers, **overrides):
    options = dict(image_shape=SHAPE, batch_size=6, layout="pk", samples_each_class=3,
                   num_workers=num_workers, seed=7, augment=AUGMENT)
    options.update(overrides)
    return make_train_loader(image_list, **options)


def _epoch(loader, epoch, start_batch=0):
    return [(images, ids) for images, ids in loader.epoch(epoch, start_batch)]


def _assert_same(batches, others):
    assert len(batches) == len(others)
    for (images, ids), (other_images, other_ids) in zip(batches, others):
        assert np.array_equal(images, other_images) and np.array_equal(ids, other_ids)


def test_two_workers_match_in_process_loading_and_resume(dataset):
    with _train_loader(dataset, 0) as in_process, _train_loader(dataset, 2) as workers:
        reference = _epoch(in_process, 1)
        assert len(reference) == in_process.batches_per_epoch == 3
        for images, ids in reference:
            assert images.shape == (6,) + SHAPE and images.dtype == np.float32
            assert ids.dtype == np.int64 and ids.shape == (6,)
        _assert_same(_epoch(workers, 1), reference)
        _assert_same(_epoch(workers, 1, start_batch=2), reference[2:])
        assert not np.array_equal(_epoch(workers, 2)[0][0], reference[0][0])
    assert not mp.active_children()


def test_rows_are_the_transformed_images_of_the_sampled_indices(dataset):
    loader = _train_loader(dataset, 0)
    items = loader.device_items(0, 0)
    images, ids = _epoch(loader, 0)[0]
    for row, (index, seed) in enumerate(items):
        expected = reader.train_transform(load_rgb(dataset.paths[index]), SHAPE, np.random.default_rng(seed), **AUGMENT)
        assert np.array_equal(images[row], expected)
        assert ids[row] == dataset.class_ids[index]


def test_abandoned_epoch_then_next_epoch(dataset):
    with _train_loader(dataset, 2) as loader:
        reference = _epoch(_train_loader(dataset, 0), 4)
        for _ in loader.epoch(3):
            break
        _assert_same(_epoch(loader, 4), reference)


def test_corrupt_training_image_replaced_within_its_class(dataset, capfd):
    bad = dataset.paths[4]  # class 1 (label 20), which has 4 images
    with open(bad, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\nbroken")
    outputs = []
    for num_workers in (0, 2):
        with _train_loader(dataset, num_workers, batch_size=18) as loader:
            epochs = [_epoch(loader, epoch) for epoch in range(6)]
        outputs.append(epochs)
        used = [index for epoch in range(6) for b in range(loader.batches_per_epoch)
                for index, _ in loader.device_items(epoch, b)]
        assert 4 in used
        stderr = capfd.readouterr().err
        assert stderr.count(bad) == 1 and "another image of its class" in stderr
    for epochs_0, epochs_2 in zip(*outputs):
        _assert_same(epochs_0, epochs_2)
    # The class ids stay those of the sampled (bad) image's class.
    for epoch in range(6):
        for batch_no, (images, ids) in enumerate(outputs[0][epoch]):
            indices = [index for index, _ in _train_loader(dataset, 0, batch_size=18).device_items(epoch, batch_no)]
            assert np.array_equal(ids, dataset.class_ids[indices]) and np.isfinite(images).all()


def test_class_without_readable_images_is_a_user_error(dataset):
    for index in np.flatnonzero(dataset.class_ids == 0):
        with open(dataset.paths[index], "wb") as handle:
            handle.write(b"junk")
    with _train_loader(dataset, 2, batch_size=18) as loader:
        with pytest.raises(UserError, match="no image of label 10 can be read"):
            _epoch(loader, 0)
    assert not mp.active_children()


def loader_batches(image_list, num_workers, batch_size=5, skip_bad=False):
    with reader.TestLoader(image_list, image_shape=SHAPE, batch_size=batch_size, num_workers=num_workers,
                    skip_bad=skip_bad) as loader:
        return list(loader.batches())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_test_loader_covers_the_list_in_order(dataset, num_workers):
    batches = loader_batches(dataset, num_workers)
    assert [len(rows) for _, rows in batches] == [5, 5, 5, 5, 2]
    rows = np.concatenate([rows for _, rows in batches])
    assert rows.tolist() == list(range(22)) and rows.dtype == np.int64
    images = np.concatenate([images for images, _ in batches])
    for row in (0, 13, 21):
        assert np.array_equal(images[row], reader.test_transform(load_rgb(dataset.paths[row]), SHAPE))
    assert not mp.active_children()


def test_test_loader_keeps_its_workers_across_passes(dataset):
    with reader.TestLoader(dataset, image_shape=SHAPE, batch_size=5, num_workers=2) as loader:
        workers = {child.pid for child in mp.active_children()}
        first = np.concatenate([images for images, _ in loader.batches()])
        abandoned = loader.batches()
        next(abandoned)
        abandoned.close()
        second = np.concatenate([images for images, _ in loader.batches()])
        assert {child.pid for child in mp.active_children()} == workers and len(workers) == 2
    assert np.array_equal(first, second)
    assert not mp.active_children()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_test_loader_bad_images(dataset, num_workers, capfd):
    for row in (3, 12):
        with open(dataset.paths[row], "wb") as handle:
            handle.write(b"")
    with pytest.raises(UserError) as info:
        loader_batches(dataset, num_workers)
    assert dataset.paths[3] in str(info.value) and "--skip_bad_images" in str(info.value)
    batches = loader_batches(dataset, num_workers, skip_bad=True)
    rows = np.concatenate([rows for _, rows in batches])
    assert rows.tolist() == [r for r in range(22) if r not in (3, 12)]
    assert sum(len(images) for images, _ in batches) == 20
    stderr = capfd.readouterr().err
    assert stderr.count(dataset.paths[3]) == 1 and stderr.count(dataset.paths[12]) == 1
    assert not mp.active_children()


def test_a_loader_run_at_each_evaluation_warns_of_a_bad_image_once(dataset, capfd):
    with open(dataset.paths[3], "wb") as handle:
        handle.write(b"")
    with reader.TestLoader(dataset, image_shape=SHAPE, batch_size=5, num_workers=0, skip_bad=True) as loader:
        for _ in range(3):  # as train.py's evaluations after each pass
            assert sum(len(rows) for _, rows in loader.batches()) == 21
    assert capfd.readouterr().err.count(dataset.paths[3]) == 1


def test_loaders_work_under_paddle_static_mode(dataset):
    script = textwrap.dedent(f"""
        import numpy as np, paddle
        from reader import TestLoader, make_train_loader, read_image_list
        paddle.enable_static()
        image_list = read_image_list({dataset.source!r}, {os.path.dirname(dataset.source)!r})
        with make_train_loader(image_list, image_shape=(3, 16, 16), batch_size=6, layout="triplet",
                               samples_each_class=2, num_workers=2, seed=0) as loader:
            images, ids = next(iter(loader.epoch(0)))
        assert type(images) is np.ndarray and images.shape == (6, 3, 16, 16), type(images)
        with TestLoader(image_list, image_shape=(3, 16, 16), batch_size=8, num_workers=2) as test_loader:
            batches = list(test_loader.batches())
        assert type(batches[0][0]) is np.ndarray and sum(len(r) for _, r in batches) == 22
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")


def test_max_pixels_makes_larger_images_unreadable(dataset):
    """24x24 images (576 pixels) under a 500-pixel limit: named with the flag that sets the limit."""
    with pytest.raises(UserError, match=r"more than the limit of 500 \(--max_image_pixels\)"):
        with reader.TestLoader(dataset, image_shape=SHAPE, batch_size=5, num_workers=0, max_pixels=500) as loader:
            list(loader.batches())
    with _train_loader(dataset, 0, max_pixels=500) as loader:
        with pytest.raises(UserError, match="limit of 500"):
            _epoch(loader, 0)
    with _train_loader(dataset, 0, max_pixels=576) as loader:
        assert len(_epoch(loader, 0)) == loader.batches_per_epoch


def test_max_image_pixels_flag_reaches_the_loaders(dataset):
    from types import SimpleNamespace

    from cli.args import parse_args
    from engine.embedder import test_loader

    for script in ("train", "eval", "infer"):
        assert parse_args(script, ["--max_image_pixels=500"]).max_image_pixels == 500
        with pytest.raises(UserError, match="--max_image_pixels must be 0 or more"):
            parse_args(script, ["--max_image_pixels=-1"])
    config = SimpleNamespace(image_shape=SHAPE, test_batch_size=5, num_workers=0, eval_resize="crop", ink_crop=False,
                             max_image_pixels=500)
    with test_loader(config, dataset, skip_bad=False) as loader:
        with pytest.raises(UserError, match="limit of 500"):
            list(loader.batches())
    with test_loader(SimpleNamespace(**{**vars(config), "max_image_pixels": 0}), dataset, skip_bad=False) as loader:
        assert len(list(loader.batches())) == 5
