"""What the toolkit needs to know about a loss, in one record per loss, and how a loss declares its settings.

Each loss file declares its `LossSpec` and, if the loss has settings, a frozen dataclass of them
(fields made with `setting`: the default, the command-line flag, one line of help, declared once).
`losses/__init__.py` lists the specs in `LOSSES`. Nothing else switches on loss names: the reader
asks the spec for the batch layout, the trainer for the host-side batch check, the programs for
whether to build the classifier, cli/args.py for the loss flags, losses/table.py for the docs' table.
"""
import math
from dataclasses import dataclass, field, fields
from typing import Callable, Optional

from utility.errors import UserError

LAYOUTS = ("triplet", "pk", "shuffle")


def setting(default, flag, help):
    """A field of a loss's settings dataclass: its default, its flag (without --) and one line of help."""
    return field(default=default, metadata={"flag": flag, "help": help})


def flag_of(params_class, name):
    """The command-line flag (without --) of the setting `name` of `params_class`."""
    return next(f.metadata["flag"] for f in fields(params_class) if f.name == name)


# The rules a setting can be held to (`require`), by the words the error message uses.
RULES = {
    "a finite number": math.isfinite,
    "positive": lambda value: math.isfinite(value) and value > 0,
    "0 or more": lambda value: math.isfinite(value) and value >= 0,
}


def require(params, rule, *names):
    """UserError unless each setting `names` of `params` (a settings dataclass) keeps `rule` (a key of RULES).

    Called from the dataclasses' __post_init__, so the flags and Python callers get the same checks.
    """
    for name in names:
        value = getattr(params, name)
        if not RULES[rule](value):
            raise UserError(f"{type(params).__name__}.{name} (--{flag_of(type(params), name)}) must be "
                            f"{rule}, got {value}")


@dataclass(frozen=True)
class LossSpec:
    """One loss, as the rest of the toolkit sees it.

    name:        the --loss_name value.
    make:        make(params, embedding_dim, num_classes) -> callable(embedding, labels) -> scalar,
                 or None when the loss is the classifier branch alone (softmax). `params` is an
                 instance of `params` (None for a loss without settings). Callers use `build_loss`.
    layout:      the batch the reader draws: "triplet" (consecutive anchor, positive, negative rows),
                 "pk" (P classes x K images) or "shuffle" (any batch).
    params:      the frozen dataclass of the loss's settings (fields made with `setting`), or None.
                 Several losses may share one (tripletloss, batchhardtripletloss and quadrupletloss
                 share TripletParams, so --margin has one home).
    check_batch: check_batch(labels: numpy [B]) raises UserError when the batch cannot feed the loss;
                 None when any batch can.
    classifies:  the loss learns to classify the training classes (so its value on held-out classes,
                 eval.py's test_loss, means nothing).
    is_classifier_branch: the loss is the softmax classifier branch itself (make gives None), so the
                 classifier is trained whatever --alpha says.
    fixed_k:     images per class in a "pk" batch whatever --samples_each_class says (npairs: 2).
    takes_noise: the loss samples pairs at random: it is called as loss(embedding, labels, noise) with
                 uniform noise [B, N] that the trainer draws from (seed, iteration, device), so that a
                 resumed run draws the same pairs (N = B + the reference rows, see takes_references).
    takes_references: the loss compares each anchor with every other row, and also accepts extra rows
                 as keywords `references` [R, D], `reference_labels` [R] (a cross-batch memory, the
                 other devices' rows): candidates are concat(batch, references), references labelled
                 -1 are ignored and get no gradient (losses/common.py, candidates and label_masks).
    takes_uncertainty: the loss weights each image by the log variance s [B] that the network predicts
                 (--uncertainty True, models/head.py): it is called as loss(embedding, labels, log_variance=s),
                 and the softmax branch it trains with is weighted alike (losses/uncertainty.py).
    summary:     one line for the docs' loss table (losses/table.py).
    """
    name: str
    make: Callable
    layout: str
    params: Optional[type] = None
    check_batch: Optional[Callable] = None
    classifies: bool = False
    is_classifier_branch: bool = False
    fixed_k: Optional[int] = None
    takes_noise: bool = False
    takes_references: bool = False
    takes_uncertainty: bool = False
    summary: str = ""

    def __post_init__(self):
        assert self.layout in LAYOUTS, self.layout

    def build_loss(self, embedding_dim, num_classes, params=None, **settings):
        """The loss callable for embeddings of `embedding_dim` and `num_classes` training classes
        (0: held-out classes, as eval.py's test_loss), or None for the softmax branch.

        Its settings: `params` (e.g. from `params_from(config)`), or the dataclass's defaults with
        the keyword `settings` changed: losses.get("multisimilarityloss").build_loss(128, 100, alpha=3.0).
        """
        if params is None:
            params = self._params(settings)
        elif settings:
            raise TypeError("give params or keyword settings, not both")
        return self.make(params, embedding_dim, num_classes)

    def params_from(self, config):
        """This loss's settings (an instance of `params`, checked) from a configuration whose
        attributes are the flags (cli.config.Config, cli.args.defaults()); None without settings."""
        if self.params is None:
            return None
        return self.params(**{f.name: getattr(config, f.metadata["flag"]) for f in fields(self.params)})

    def _params(self, settings):
        if self.params is None:
            if settings:
                raise UserError(f"{self.name} has no settings, got {', '.join(settings)}")
            return None
        known = {f.name for f in fields(self.params)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise UserError(f"{self.name} has no setting {unknown[0]}; its settings: {', '.join(sorted(known))}")
        return self.params(**settings)

    def samples_each_class(self, requested):
        """K of a P x K batch for this loss (1 for the other layouts); UserError for K < 2."""
        if self.layout != "pk":
            return 1
        k = self.fixed_k or requested
        if k < 2:
            raise UserError(f"{self.name} needs P x K batches with --samples_each_class >= 2 "
                            f"(got {k}): every anchor needs a positive")
        return k


@dataclass(frozen=True)
class Flag:
    """A loss setting as a command-line flag: cli/args.py adds one argument per Flag."""
    name: str          # without the leading --
    kind: type         # float, int or bool
    default: object
    help: str          # "LOSS[, LOSS...]: what the setting does"


def loss_flags(specs):
    """One Flag per setting of the `specs`' settings dataclasses (a dataclass shared by several losses
    counts once, its help naming them all); AssertionError if two dataclasses declare the same flag."""
    owners = {}
    for spec in specs:
        if spec.params is not None:
            owners.setdefault(spec.params, []).append(spec.name)
    flags = {}
    for params_class, names in owners.items():
        for f in fields(params_class):
            flag = f.metadata["flag"]
            assert f.type in (float, int, bool), f"{params_class.__name__}.{f.name}: float, int or bool, not {f.type}"
            assert flag not in flags, f"--{flag} is declared twice (the second time by {params_class.__name__})"
            flags[flag] = Flag(flag, f.type, f.default, f"{', '.join(names)}: {f.metadata['help']}")
    return list(flags.values())

