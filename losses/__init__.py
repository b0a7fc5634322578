"""Metric-learning losses, built by name.

Each loss is a function of (embedding, labels) returning the mean loss as a scalar tensor,
written with paddle tensor ops so it runs eagerly and inside a static Program.
"""
from functools import partial

from losses.arcmarginloss import ArcMarginLoss, arcmargin_loss
from losses.common import check_batch_labels
from losses.emlloss import emlloss
from losses.npairsloss import npairsloss
from losses.quadrupletloss import quadrupletloss
from losses.softmaxloss import softmax_loss
from losses.tripletloss import batch_hard_tripletloss, tripletloss
from utility.errors import UserError

LOSS_NAMES = ("tripletloss", "quadrupletloss", "emlloss", "npairsloss", "arcmargin", "softmax")
TRIPLET_MINING = ("none", "hard")

__all__ = ["LOSS_NAMES", "build_metric_loss", "sampling", "softmax_loss", "check_batch_labels",
           "tripletloss", "batch_hard_tripletloss", "quadrupletloss", "emlloss", "npairsloss",
           "arcmargin_loss", "ArcMarginLoss"]


def _check_name(name, triplet_mining):
    if name not in LOSS_NAMES:
        raise UserError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    if triplet_mining not in TRIPLET_MINING:
        raise UserError(f"unknown triplet mining {triplet_mining!r}; choose one of {', '.join(TRIPLET_MINING)}")
    if triplet_mining != "none" and name != "tripletloss":
        raise UserError(f"--triplet_mining={triplet_mining} applies to tripletloss only, not {name}")


def build_metric_loss(name, *, embedding_dim, num_classes, margin=0.1, triplet_mining="none",
                      arc_scale=80.0, arc_margin=0.15, arc_easy_margin=False, npairs_reg_lambda=0.01):
    """The metric loss `name` as a callable(embedding, labels) -> scalar tensor.

    arcmargin gives an ArcMarginLoss Layer (it owns the weight 'arcmargin_weights'
    [embedding_dim, num_classes]); softmax gives None (no metric loss, the classifier
    branch alone). Unknown names raise UserError.
    """
    _check_name(name, triplet_mining)
    if name == "tripletloss":
        return partial(batch_hard_tripletloss if triplet_mining == "hard" else tripletloss, margin=margin)
    if name == "quadrupletloss":
        return partial(quadrupletloss, margin=margin)
    if name == "emlloss":
        return emlloss
    if name == "npairsloss":
        return partial(npairsloss, reg_lambda=npairs_reg_lambda)
    if name == "arcmargin":
        return ArcMarginLoss(embedding_dim, num_classes, margin=arc_margin, scale=arc_scale,
                             easy_margin=arc_easy_margin)
    return None


def sampling(name, triplet_mining, samples_each_class):
    """The batch layout loss `name` needs, as (kind, samples per class), for the reader.

    ("triplet", 1): consecutive (anchor, positive, negative) rows (tripletloss);
    ("pk", K): P classes x K images, K = samples_each_class (quadrupletloss, emlloss,
    tripletloss with hard mining) or K = 2 whatever samples_each_class says (npairsloss,
    one anchor and one positive per class); ("shuffle", 1): any shuffled batch
    (softmax, arcmargin).
    """
    _check_name(name, triplet_mining)
    if name == "tripletloss" and triplet_mining == "none":
        return "triplet", 1
    if name == "npairsloss":
        return "pk", 2
    if name in ("softmax", "arcmargin"):
        return "shuffle", 1
    if samples_each_class < 2:
        raise UserError(f"{name} needs P x K batches with --samples_each_class >= 2 "
                        f"(got {samples_each_class}): every anchor needs a positive")
    return "pk", samples_each_class
