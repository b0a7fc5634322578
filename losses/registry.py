"""What the toolkit needs to know about a loss, in one record per loss.

Each loss file declares its `LossSpec`; `losses/__init__.py` lists them in `LOSSES`.
Nothing else switches on loss names: the reader asks the spec for the batch layout,
the trainer for the host-side batch check, the programs for whether to build the classifier.
"""
from dataclasses import dataclass
from typing import Callable, Optional

from utility.errors import UserError

LAYOUTS = ("triplet", "pk", "shuffle")


@dataclass(frozen=True)
class LossSpec:
    """One loss, as the rest of the toolkit sees it.

    name:        the --loss_name value.
    build:       build(options, embedding_dim, num_classes) -> callable(embedding, labels) -> scalar,
                 or None when the loss is the classifier branch alone (softmax). `options` is any
                 object carrying the loss flags as attributes (the resolved configuration).
    layout:      the batch the reader draws: "triplet" (consecutive anchor, positive, negative rows),
                 "pk" (P classes x K images) or "shuffle" (any batch).
    check_batch: check_batch(labels: numpy [B]) raises UserError when the batch cannot feed the loss;
                 None when any batch can.
    classifies:  the loss learns to classify the training classes (so its value on held-out classes,
                 eval.py's test_loss, means nothing).
    is_classifier_branch: the loss is the softmax classifier branch itself (build gives None), so the
                 classifier is trained whatever --alpha says.
    fixed_k:     images per class in a "pk" batch whatever --samples_each_class says (npairs: 2).
    takes_noise: the loss samples pairs at random: it is called as loss(embedding, labels, noise) with
                 uniform noise [B, N] that the trainer draws from (seed, iteration, device), so that a
                 resumed run draws the same pairs (N = B + the reference rows, see takes_references).
    takes_references: the loss compares each anchor with every other row, and also accepts extra rows
                 as keywords `references` [R, D], `reference_labels` [R] (a cross-batch memory, the
                 other devices' rows): candidates are concat(batch, references), references labelled
                 -1 are ignored and get no gradient (losses/common.py, candidates and label_masks).
    summary:     one line for --help and the README's loss table.
    """
    name: str
    build: Callable
    layout: str
    check_batch: Optional[Callable] = None
    classifies: bool = False
    is_classifier_branch: bool = False
    fixed_k: Optional[int] = None
    takes_noise: bool = False
    takes_references: bool = False
    summary: str = ""

    def __post_init__(self):
        assert self.layout in LAYOUTS, self.layout

    def samples_each_class(self, requested):
        """K of a P x K batch for this loss (1 for the other layouts); UserError for K < 2."""
        if self.layout != "pk":
            return 1
        k = self.fixed_k or requested
        if k < 2:
            raise UserError(f"{self.name} needs P x K batches with --samples_each_class >= 2 "
                            f"(got {k}): every anchor needs a positive")
        return k
