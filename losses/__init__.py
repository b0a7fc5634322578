"""Metric-learning losses and their registry.

Each loss is a function of (embedding, labels) returning the mean loss as a scalar tensor,
written with paddle tensor ops so it runs eagerly and inside a static Program. Its file also
declares a `LossSpec` and the dataclass of its settings (losses/registry.py): adding a loss is
one file plus one line in LOSSES; its flags, --help and the docs' table follow from them.

    import losses
    loss = losses.get("multisimilarityloss").build_loss(128, 100, alpha=3.0)   # callable(embedding, labels)
"""
from losses import (arcmarginloss, centerloss, circleloss, contrastiveloss, cosfaceloss, crankedloss, emlloss,
                    marginloss, multisimilarityloss, npairsloss, proxyanchorloss, proxyncaloss, quadrupletloss,
                    rankedlistloss, softmaxloss, softtripleloss, subcenterarcface, supconloss, tripletloss,
                    uncertainty)
from losses.registry import LossSpec, loss_flags
from losses.softmaxloss import softmax_loss
from losses.uncertainty import uncertainty_softmax_loss
from utility.errors import UserError

LOSSES = {spec.name: spec for spec in (
    tripletloss.SPEC,
    tripletloss.BATCH_HARD_SPEC,
    quadrupletloss.SPEC,
    emlloss.SPEC,
    npairsloss.SPEC,
    arcmarginloss.SPEC,
    softmaxloss.SPEC,
    rankedlistloss.SPEC,
    crankedloss.SPEC,
    multisimilarityloss.SPEC,
    marginloss.SPEC,
    cosfaceloss.SPEC,
    contrastiveloss.SPEC,
    circleloss.SPEC,
    supconloss.SPEC,
    proxyanchorloss.SPEC,
    proxyncaloss.SPEC,
    subcenterarcface.SPEC,
    softtripleloss.SPEC,
    uncertainty.TRIPLET_SPEC,
    uncertainty.SOFTMAX_SPEC,
)}

# Terms added to whichever loss is trained, each switched on by its own settings (not a --loss_name).
AUXILIARY = {centerloss.SPEC.name: centerloss.SPEC}

# The command-line flags of every loss setting (cli/args.py adds them to the loss group).
FLAGS = loss_flags([*LOSSES.values(), *AUXILIARY.values()])

__all__ = ["AUXILIARY", "FLAGS", "LOSSES", "LossSpec", "get", "softmax_loss", "uncertainty_softmax_loss"]


def get(name):
    """The LossSpec of --loss_name `name`; UserError for an unknown name."""
    if name not in LOSSES:
        raise UserError(f"unknown --loss_name {name}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]
