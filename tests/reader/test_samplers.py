"""Batch composition of the train layouts, per-device shares, and size errors."""
import numpy as np
import pytest

from reader import make_train_loader, read_image_list
from tests.reader_fixtures import make_dataset
from utility.errors import UserError


@pytest.fixture(scope="module")
def image_list(tmp_path_factory):
    # 8 classes; class 30 has a single image (fewer than K).
    list_path, data_dir = make_dataset(tmp_path_factory.mktemp("samplers"), [4, 3, 1, 5, 4, 3, 6, 4], size=8)
    return read_image_list(list_path, data_dir)


def _loader(image_list, **overrides):
    options = dict(image_shape=(3, 8, 8), batch_size=12, layout="pk", samples_each_class=3,
                   num_workers=0, seed=0)
    options.update(overrides)
    return make_train_loader(image_list, **options)


def _indices(loader, epoch, batch_no):
    return np.array([index for index, _ in loader.device_items(epoch, batch_no)])


def test_pk_batches_are_p_distinct_classes_of_k_consecutive_images(image_list):
    loader = _loader(image_list)
    assert loader.batches_per_epoch == len(image_list) // 12
    for batch_no in range(loader.batches_per_epoch):
        indices = _indices(loader, 0, batch_no)
        groups = image_list.class_ids[indices].reshape(4, 3)
        assert (groups == groups[:, :1]).all()               # K consecutive images of one class
        assert len(set(groups[:, 0].tolist())) == 4          # P distinct classes
        for group in indices.reshape(4, 3):
            if image_list.labels[group[0]] != 30:             # enough images: no repeats
                assert len(set(group.tolist())) == 3


def test_small_class_sampled_with_replacement_and_noted_once(image_list, capsys):
    loader = _loader(image_list)
    notes = capsys.readouterr().out
    assert notes.count("note:") == 1 and "1 of 8 classes have fewer than 3 images" in notes and "30" in notes
    single = int(np.flatnonzero(image_list.labels == 30)[0])
    seen = [_indices(loader, epoch, 0) for epoch in range(40)]
    with_single = [indices for indices in seen if single in indices]
    assert with_single and all((indices == single).sum() == 3 for indices in with_single)
    assert capsys.readouterr().out == ""


def test_devices_get_whole_distinct_classes(image_list):
    ranks = [_loader(image_list, world_size=2, rank=rank) for rank in (0, 1)]
    for epoch in range(5):
        shares = [_indices(loader, epoch, 0) for loader in ranks]
        classes = [image_list.class_ids[share].reshape(2, 3) for share in shares]
        for groups in classes:
            assert len(groups) == 2 and (groups == groups[:, :1]).all()
        assert not set(classes[0][:, 0].tolist()) & set(classes[1][:, 0].tolist())
        single_device = _indices(_loader(image_list), epoch, 0)
        assert np.array_equal(np.concatenate(shares), single_device)


def test_triplet_layout(image_list):
    loader = _loader(image_list, layout="triplet", batch_size=12)
    for epoch in range(10):
        triplets = image_list.class_ids[_indices(loader, epoch, 0)].reshape(4, 3)
        assert (triplets[:, 0] == triplets[:, 1]).all() and (triplets[:, 0] != triplets[:, 2]).all()
        assert len(set(triplets[:, 0].tolist())) == 4


def test_shuffle_layout_covers_the_list_once_per_epoch(image_list):
    loader = _loader(image_list, layout="shuffle", batch_size=6)
    assert loader.batches_per_epoch == 5
    seen = np.concatenate([_indices(loader, 1, b) for b in range(5)])
    assert sorted(seen.tolist()) == list(range(30))
    assert not np.array_equal(seen, np.concatenate([_indices(loader, 2, b) for b in range(5)]))


def test_shuffle_layout_with_a_list_shorter_than_the_batch(image_list):
    loader = _loader(image_list, layout="shuffle", batch_size=48)
    assert loader.batches_per_epoch == 1 and len(_indices(loader, 0, 0)) == 48


def test_batches_depend_on_seed_epoch_and_position_only(image_list):
    first, second = _loader(image_list), _loader(image_list)
    assert first.device_items(3, 1) == second.device_items(3, 1)
    assert first.device_items(3, 1) != first.device_items(4, 1) != first.device_items(3, 0)
    assert first.device_items(3, 1) != _loader(image_list, seed=1).device_items(3, 1)


@pytest.mark.parametrize("overrides, message", [
    (dict(batch_size=10), "multiple of --samples_each_class 3"),
    (dict(batch_size=24, samples_each_class=4, world_size=4), "multiple of --samples_each_class 4 on each of the 4"),
    (dict(batch_size=12, world_size=5), "multiple of the 5 device"),
    (dict(layout="triplet", batch_size=10), "multiple of 3"),
    (dict(layout="triplet", batch_size=6, world_size=3), "multiple of 3 (triplets) on each of the 3"),
    (dict(batch_size=27), "needs 9 classes, the list has 8"),
    (dict(seed=-1), "--seed"),
])
def test_size_errors(image_list, overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _loader(image_list, **overrides)


def test_unlabelled_list_cannot_train(image_list):
    unlabelled = type(image_list)(image_list.paths, None, None, None, "u.txt")
    with pytest.raises(UserError, match="u.txt: training needs a label"):
        _loader(unlabelled)


def test_triplets_need_two_classes(tmp_path):
    list_path, data_dir = make_dataset(tmp_path, [3], size=8)
    with pytest.raises(UserError, match="at least 2 classes"):
        _loader(read_image_list(list_path, data_dir), layout="triplet", batch_size=3)
