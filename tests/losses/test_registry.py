"""The registry: every loss by name, its settings declared once (dataclass -> flags, --help, checks), its batch
layout and host-side batch check, and the two ways to build it (Python keywords, a resolved configuration)."""
import math
from dataclasses import dataclass

import numpy as np
import paddle
import pytest
from loss_checks import np_batch_hard, np_npairs, pk_labels, tensor, value
from paddle_modes import static_mode

import losses
from cli.args import build_parser, defaults, parse_args
from losses.multisimilarityloss import MultiSimilarityParams
from losses.registry import LossSpec, loss_flags, setting
from utility.errors import UserError

# Every loss flag: command lines and checkpoints' saved settings use these names, so none may change.
FLAG_NAMES = {"margin", "arc_scale", "arc_margin", "arc_easy_margin", "npairs_reg_lambda", "rll_alpha", "rll_margin",
              "rll_temperature", "rll_lambda", "ms_alpha", "ms_beta", "ms_lambda", "ms_epsilon", "margin_alpha",
              "margin_beta", "margin_beta_per_class", "margin_cutoff", "cos_scale", "cos_margin",
              "contrastive_pos_margin", "contrastive_neg_margin", "circle_m", "circle_gamma", "supcon_temperature",
              "proxyanchor_alpha", "proxyanchor_delta", "proxyanchor_proxy_lr", "proxynca_scale", "subcenter_k",
              "subcenter_scale", "subcenter_margin", "softtriple_k", "softtriple_lambda", "softtriple_gamma",
              "softtriple_tau", "softtriple_delta", "center_loss_weight"}

# The losses built as a layer (they own learned parameters) and those that classify the training classes.
LAYERS = {"arcmargin", "marginloss", "cosface", "proxyanchorloss", "proxyncaloss", "subcenterarcface",
          "softtripleloss"}
CLASSIFIERS = {"softmax", "arcmargin", "cosface", "proxyanchorloss", "proxyncaloss", "subcenterarcface",
               "softtripleloss", "uncertaintysoftmax"}


def test_registry_builds_every_name_without_a_command_line():
    for name, spec in losses.LOSSES.items():
        assert spec.name == name and spec.summary
        loss = spec.build_loss(4, 3)
        assert (loss is None) == (name in ("softmax", "uncertaintysoftmax"))
        assert isinstance(loss, paddle.nn.Layer) == (name in LAYERS)
        assert spec.classifies == (name in CLASSIFIERS)
    with pytest.raises(UserError, match="tripletloss, batchhardtripletloss"):
        losses.get("contrastive")


def test_settings_from_python_keywords_and_from_a_configuration_agree():
    rng = np.random.default_rng(10)
    features, labels = rng.normal(size=(8, 4)), pk_labels(4, 2)
    f, y = tensor(features), paddle.to_tensor(labels)
    hard = losses.get("batchhardtripletloss")
    want = np_batch_hard(features, labels, margin=0.7)
    assert value(hard.build_loss(4, 4, margin=0.7)(f, y)) == pytest.approx(want)
    assert value(hard.build_loss(4, 4, hard.params_from(defaults("train", margin=0.7)))(f, y)) == pytest.approx(want)
    npairs = losses.get("npairsloss")
    config = defaults("eval", npairs_reg_lambda=0.3)
    assert value(npairs.build_loss(4, 4, npairs.params_from(config))(f, y)) == pytest.approx(
        np_npairs(features, labels, reg_lambda=0.3))


def test_params_from_picks_the_loss_settings_by_their_flags():
    config = defaults("train", ms_alpha=3.0, ms_lambda=0.2, rll_alpha=9.0)
    assert losses.get("multisimilarityloss").params_from(config) == MultiSimilarityParams(alpha=3.0, base=0.2)
    assert losses.get("emlloss").params_from(config) is None


def test_unknown_settings_are_refused():
    with pytest.raises(UserError, match="multisimilarityloss has no setting lambda_; its settings: alpha, base"):
        losses.get("multisimilarityloss").build_loss(4, 3, lambda_=0.5)
    with pytest.raises(UserError, match="emlloss has no settings, got margin"):
        losses.get("emlloss").build_loss(4, 3, margin=0.5)
    with pytest.raises(TypeError, match="not both"):
        losses.get("tripletloss").build_loss(4, 3, losses.tripletloss.TripletParams(), margin=0.2)


@pytest.mark.parametrize("name,setting_name,flag,bad", [
    ("multisimilarityloss", "beta", "ms_beta", 0.0),
    ("multisimilarityloss", "base", "ms_lambda", math.inf),
    ("tripletloss", "margin", "margin", -0.1),
    ("quadrupletloss", "margin", "margin", math.nan),
    ("arcmargin", "scale", "arc_scale", -1.0),
    ("cosface", "scale", "cos_scale", 0.0),
    ("npairsloss", "reg_lambda", "npairs_reg_lambda", -1.0),
    ("rankedlistloss", "temperature", "rll_temperature", -1.0),
    ("marginloss", "cutoff", "margin_cutoff", 0.0),
])
def test_settings_are_checked_the_same_from_python_and_from_flags(name, setting_name, flag, bad):
    message = f"{setting_name} \\(--{flag}\\) must be"
    with pytest.raises(UserError, match=message):
        losses.get(name).build_loss(4, 3, **{setting_name: bad})
    for script in ("train", "eval"):
        with pytest.raises(UserError, match=message):
            parse_args(script, [f"--{flag}={bad}"])


def test_every_setting_is_a_flag_of_every_script_with_its_default():
    assert {flag.name for flag in losses.FLAGS} == FLAG_NAMES
    for script in ("train", "eval", "infer"):
        options = defaults(script)
        for flag in losses.FLAGS:
            assert getattr(options, flag.name) == flag.default, (script, flag.name)
    assert parse_args("train", ["--margin_beta_per_class=False"]).margin_beta_per_class is False
    assert parse_args("train", ["--ms_alpha=3"]).ms_alpha == 3.0


def test_help_lists_the_loss_flags_with_their_defaults():
    text = " ".join(build_parser("train").format_help().split())
    assert "--ms_alpha MS_ALPHA multisimilarityloss: scale alpha of the positive term (default: 2.0)" in text
    assert "--margin MARGIN tripletloss, batchhardtripletloss, quadrupletloss, uncertaintytriplet: margin" in text


def test_a_shared_settings_class_gives_one_flag_and_a_flag_is_declared_once():
    margin_flags = [flag for flag in losses.FLAGS if flag.name == "margin"]
    assert len(margin_flags) == 1
    assert margin_flags[0].help.startswith("tripletloss, batchhardtripletloss, quadrupletloss, uncertaintytriplet:")

    @dataclass(frozen=True)
    class Clash:
        alpha: float = setting(1.0, "ms_alpha", "another loss's flag")

    clash = LossSpec(name="clash", make=lambda params, embedding_dim, num_classes: None, layout="pk", params=Clash)
    with pytest.raises(AssertionError, match="--ms_alpha is declared twice"):
        loss_flags([*losses.LOSSES.values(), clash])


def test_batch_layouts():
    layouts = {name: (spec.layout, spec.samples_each_class(4)) for name, spec in losses.LOSSES.items()}
    assert layouts == {"tripletloss": ("triplet", 1), "batchhardtripletloss": ("pk", 4),
                       "quadrupletloss": ("pk", 4), "emlloss": ("pk", 4), "npairsloss": ("pk", 2),
                       "softmax": ("shuffle", 1), "arcmargin": ("shuffle", 1),
                       "rankedlistloss": ("pk", 4), "crankedloss": ("pk", 4), "multisimilarityloss": ("pk", 4),
                       "marginloss": ("pk", 4),
                       "cosface": ("shuffle", 1), "contrastiveloss": ("pk", 4), "circleloss": ("pk", 4),
                       "supconloss": ("pk", 4), "proxyanchorloss": ("shuffle", 1), "proxyncaloss": ("shuffle", 1),
                       "subcenterarcface": ("shuffle", 1), "softtripleloss": ("shuffle", 1),
                       "uncertaintytriplet": ("pk", 4), "uncertaintysoftmax": ("shuffle", 1)}
    assert losses.get("npairsloss").samples_each_class(1) == 2
    with pytest.raises(UserError, match="samples_each_class >= 2"):
        losses.get("emlloss").samples_each_class(1)


def test_batch_checks_on_host():
    losses.get("emlloss").check_batch(np.array([1, 2, 1, 2]))
    losses.get("quadrupletloss").check_batch(np.array([1, 1, 2, 3]))  # one positive pair is enough
    losses.get("tripletloss").check_batch(np.array([1, 1, 2]))
    for name in ("softmax", "arcmargin", "cosface"):
        assert losses.get(name).check_batch is None
    with pytest.raises(UserError, match="no positive"):
        losses.get("batchhardtripletloss").check_batch(np.array([1, 2, 3]))
    with pytest.raises(UserError, match="emlloss: class 3"):
        losses.get("emlloss").check_batch(np.array([1, 1, 3]))
    with pytest.raises(UserError, match="P x 2 batches"):
        losses.get("npairsloss").check_batch(np.array([1, 1, 2, 3]))
    for name in ("rankedlistloss", "multisimilarityloss", "marginloss"):
        losses.get(name).check_batch(np.array([7, 9, 7, 9]))
        with pytest.raises(UserError, match=f"{name}: class 3 has a single image"):
            losses.get(name).check_batch(np.array([1, 1, 3]))


def test_eval_test_loss_builds_the_loss_from_the_configuration():
    from engine.evaluate import test_loss  # imported here: pytest would collect a module-level test_loss

    labels = np.repeat(np.array([101, 102, 103, 104]), 5)
    features = np.random.default_rng(19).normal(size=(20, 8)).astype("float32")
    with static_mode():
        for name in ("rankedlistloss", "multisimilarityloss", "marginloss"):
            result = test_loss(defaults("eval", loss_name=name, samples_each_class=4, test_batch_size=8),
                               features, labels)
            assert np.isfinite(result) and result > 0, name
        assert math.isnan(test_loss(defaults("eval", loss_name="cosface"), features, labels))
        # The configuration's settings reach the loss: another margin gives another value.
        wide, narrow = (test_loss(defaults("eval", loss_name="batchhardtripletloss", samples_each_class=4,
                                           test_batch_size=8, margin=margin), features, labels) for margin in (2.0, 0.1))
        assert wide > narrow
