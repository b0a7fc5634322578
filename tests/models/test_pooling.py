"""--pooling gem (models/layers.py GeneralizedMeanPool): the formula, its learned exponent, every path it runs on."""
import json
import os

import numpy as np
import paddle
import pytest
from paddle.utils import unique_name
from backbone_checks import exported_features
from train_runs import final_parameters, read_state, run_train

from cli.args import defaults
from engine.embedder import EXPORT_INFO, EXPORT_PREFIX, model_fingerprint, preprocess_description
from engine.network_spec import NetworkSpec
from models import build_model
from models.layers import GEM_EPS, GEM_P, GeneralizedMeanPool
from utility.errors import UserError


def gem_pool(p=None):
    with unique_name.guard():  # eager Paddle refuses a parameter name used before in this process
        return GeneralizedMeanPool(p)


def gem_reference(x, p):
    return (np.clip(x.astype(np.float64), GEM_EPS, None) ** p).mean(axis=(2, 3)) ** (1 / p)


def test_the_generalized_mean_and_the_gradient_of_its_exponent_match_numpy():
    x = np.random.default_rng(0).random((2, 3, 4, 5), dtype=np.float32)
    x[0, 0] = 0.0  # a map a ReLU zeroed: clipped, so the exponent still has a gradient
    pool = gem_pool()
    assert pool.p.name == "gem_p" and pool.p.numpy().item() == GEM_P
    images = paddle.to_tensor(x, stop_gradient=False)
    pooled = pool(images)
    np.testing.assert_allclose(pooled.numpy(), gem_reference(x, GEM_P), rtol=1e-5)
    weights = np.random.default_rng(1).normal(size=(2, 3))
    (pooled * paddle.to_tensor(weights, dtype="float32")).sum().backward()

    def objective(p):
        return (gem_reference(x, p) * weights).sum()

    numeric = (objective(GEM_P + 1e-6) - objective(GEM_P - 1e-6)) / 2e-6
    np.testing.assert_allclose(pool.p.grad.numpy().item(), numeric, rtol=1e-3)
    assert np.isfinite(images.grad.numpy()).all()
    # p = 1 is the average, a large p nears the maximum.
    np.testing.assert_allclose(gem_pool(1.0)(paddle.to_tensor(x)).numpy(), x.clip(GEM_EPS).mean(axis=(2, 3)),
                               rtol=1e-5)
    near_max = gem_pool(60.0)(paddle.to_tensor(x[1:])).numpy()
    assert np.all(near_max <= x[1:].max(axis=(2, 3)) + 1e-6) and np.all(near_max > 0.9 * x[1:].max(axis=(2, 3)))


def test_gem_adds_only_its_exponent_and_at_p_1_the_network_embeds_as_with_the_average():
    average = build_model("ResNet18", embedding_size=8, stem="small")
    gem = build_model("ResNet18", embedding_size=8, stem="small", pooling="gem")
    gem_names = {p.name for p in gem.parameters()}
    assert gem_names - {p.name for p in average.parameters()} == {"gem_p"}
    weights = {p.name: p.numpy() for p in average.parameters()}
    for parameter in gem.parameters():
        parameter.set_value(np.array([1.0], np.float32) if parameter.name == "gem_p" else weights[parameter.name])
    average.eval()
    gem.eval()
    x = paddle.to_tensor(np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32))
    np.testing.assert_allclose(gem(x).inference_embedding.numpy(), average(x).inference_embedding.numpy(),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="unknown pooling 'max'; choose one of: avg, gem"):
        build_model("ResNet18", pooling="max")


@pytest.mark.parametrize("engine", ["onnxruntime", "paddle"])
def test_a_gem_network_exports_with_the_programs_features(tmp_path, engine):
    executed, exported = exported_features("ResNet18", tmp_path / "exported", engine=engine, pooling="gem",
                                           embedding_size=8)
    np.testing.assert_allclose(exported, executed, rtol=0, atol=1e-4 * np.abs(executed).max())


def test_training_learns_the_exponent_and_the_checkpoint_remembers_the_pooling(tiny_dataset, tmp_path, no_recall):
    run_train(tiny_dataset, str(tmp_path), "--pooling=gem", "--lr=0.5", loss="softmax")
    checkpoint = os.path.join(str(tmp_path), "ResNet18", "2")
    learned = float(np.asarray(final_parameters(checkpoint)["gem_p"]).ravel()[0])
    assert learned != GEM_P and np.isfinite(learned)
    assert read_state(checkpoint)["network"]["pooling"] == "gem"


def test_exports_from_before_the_pooling_setting_keep_their_fingerprint(tmp_path):
    """Galleries and dumps carry their model's fingerprint: an export written before --pooling existed (no
    "pooling" in preprocess.json) and the same export with "avg" must agree; "gem" is another model."""
    def fingerprint(**fields):
        folder = tmp_path / "_".join(f"{k}{v}" for k, v in fields.items()) if fields else tmp_path / "old"
        folder.mkdir()
        for suffix in (".json", ".pdiparams"):
            (folder / (EXPORT_PREFIX + suffix)).write_bytes(b"the same parameters")
        info = {**NetworkSpec.from_config(defaults("infer")).to_record(), **preprocess_description("crop")}
        del info["pooling"]
        (folder / EXPORT_INFO).write_text(json.dumps({**info, **fields}))
        return model_fingerprint(str(folder))

    before_the_setting = fingerprint()
    assert fingerprint(pooling="avg") == before_the_setting
    assert fingerprint(pooling="gem") != before_the_setting
