import os

import numpy as np
import pytest

from engine.dump import dump_fingerprint, read_dump, write_dump
from utility.errors import UserError


def test_a_dump_reads_back_and_sigma_squared_comes_and_goes_with_the_model(tmp_path):
    out = tmp_path / "out"
    features = np.arange(6, dtype="float64").reshape(2, 3)
    write_dump(str(out), features, np.array([1, 2]), ["a/x.png", "a/y.png"], "f00d", np.array([0.5, 2.0]))
    read = read_dump(str(out), "", "f00d", 3)
    np.testing.assert_array_equal(read[0], features.astype("float32"))
    assert read[1:4] == (["a/x.png", "a/y.png"], [1, 2], os.path.abspath("a"))  # the paths' common folder
    np.testing.assert_array_equal(read[4], np.array([0.5, 2.0], "float32"))
    write_dump(str(out), features, np.array([1, 2]), ["a/x.png", "a/y.png"], "beef")
    assert not (out / "uncertainty.npy").exists()
    assert read_dump(str(out), "data", "beef", 3)[3:] == ("data", None)


def test_the_fingerprint_of_a_dump_is_read_back_and_a_missing_or_damaged_one_is_one_clear_error(tmp_path):
    write_dump(str(tmp_path), np.ones((1, 2)), np.array([0]), ["x.png"], "f00d")
    assert dump_fingerprint(str(tmp_path)) == "f00d"
    for damage in ("[1, 2]", "{not json"):
        (tmp_path / "fingerprint.json").write_text(damage)
        with pytest.raises(UserError, match="not a complete infer.py dump: cannot read its fingerprint.json"):
            read_dump(str(tmp_path), "", "f00d", 2)
    (tmp_path / "fingerprint.json").unlink()
    with pytest.raises(UserError, match="cannot read its fingerprint.json"):
        dump_fingerprint(str(tmp_path))
