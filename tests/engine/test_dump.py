import os

import numpy as np

from engine.dump import read_dump, write_dump


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
