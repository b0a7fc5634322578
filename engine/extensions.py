"""Extensions of the training loop: the interface, and the small extensions that need no module of their own.

An extension is a feature that the plain loop (engine/trainer.py) and train program (engine/programs.py)
know nothing about. It may
- add inputs to the train program and change what the metric loss sees (`add_to_graph`, inside
  build_train_graph, before the loss is called),
- feed values into each step and fetch values out of it (`before_step`, `fetch_list`, `after_step`),
- act before each pass (`before_pass`),
- keep a JSON-able record that checkpoints save under its `name` in state.json and a resumed run
  gives back (`state`, `restore`).
engine/training.py builds the list of a run, in the order the extensions shape the loss inputs and
see each step. The others: divide and conquer (engine/dac.py), cross-batch memory (engine/xbm.py).
"""
import math
from dataclasses import dataclass, field

import numpy as np
import paddle

from engine import checkpoint
from utility.errors import UserError


class LossInputs:
    """The arguments of the metric loss, as the extensions shape them inside build_train_graph's program guard.

    Reference rows (losses/common.py, candidates): a loss that takes them compares its anchors with the
    device's batch followed by `references` [N, D] (labels `reference_labels` [N]), in the order the
    extensions added them.
    """

    def __init__(self, embedding, label, world_size=1, rank=0):
        self.network_embedding = embedding  # the network's output, whatever the extensions make the loss see
        self.embedding, self.label = embedding, label
        self.world_size, self.rank = world_size, rank
        self.references = self.reference_labels = None
        self.noise = None                   # [B, B + N] uniform numbers, for losses that sample pairs
        self._every_device = None

    def add_references(self, rows, labels):
        if self.references is None:
            self.references, self.reference_labels = rows, labels
        else:
            self.references = paddle.concat([self.references, rows], axis=0)
            self.reference_labels = paddle.concat([self.reference_labels, labels], axis=0)

    def every_device_rows(self):
        """(embeddings, labels) of every device's batch in rank order (the network's embedding), gathered once."""
        if self.world_size == 1:
            return self.network_embedding, self.label
        if self._every_device is None:
            self._every_device = (gather_rows(self.network_embedding, self.world_size),
                                  gather_rows(self.label, self.world_size))
        return self._every_device

    def call(self, spec, metric_loss):
        """The metric loss of `spec` (losses.LossSpec) on these inputs."""
        if self.references is not None and not spec.takes_references:  # the extensions' checks stop this earlier
            raise UserError(f"{spec.name} takes no reference rows (--xbm_size, --gather_embeddings)")
        noise = () if self.noise is None else (self.noise,)
        extra = {} if self.references is None else {"references": self.references,
                                                     "reference_labels": self.reference_labels}
        return metric_loss(self.embedding, self.label, *noise, **extra)


@dataclass
class Step:
    """One training step as the extensions see it: `stats` (the fetched figures) are filled after the run."""
    graph: object
    position: object      # engine.trainer.Position of the step (before it advances)
    labels: np.ndarray
    log: object           # engine.trainer.RunLog of the run (writes nothing on other devices than 0)
    stats: dict = field(default_factory=dict)


class Extension:
    """Does nothing at every hook; an extension overrides the hooks it needs."""
    name = None  # the key of its record in state.json; None when it saves nothing

    def add_to_graph(self, inputs):
        """Declare program inputs and change `inputs` (LossInputs); called inside the program guard."""

    def fetch_list(self):
        """Values of the train program to fetch at each step, handed to after_step."""
        return []

    def reference_rows(self, device_batch):
        """How many reference rows this extension adds for a device batch of `device_batch` rows."""
        return 0

    def before_pass(self, pass_id, exe, graph):
        """Before each pass, and before the rest of a pass a resumed run starts in."""

    def before_step(self, step):
        """Feed entries of this step (a dict of input name -> array)."""
        return {}

    def after_step(self, step, fetched):
        """After the step ran and its figures are in step.stats. Returning False discards the step: the
        extensions after this one are not called, and its figures are neither shown nor counted."""
        return True

    def state(self):
        """The JSON-able record that checkpoints save under `name`."""
        return None

    def restore(self, state, source):
        """Continue from a record of `state()` (None when the checkpoint `source` holds none)."""

    def close(self):
        """Release what the extension holds open (loaders, files)."""


def gather_rows(values, world_size):
    """Every device's `values` [B, ...] stacked in rank order, [world_size * B, ...], inside a static program.

    Collective of the gloo/NCCL group set up by init_parallel_env; no gradient flows back through it.
    (paddle._C_ops.all_gather works in a PIR program on CPU where paddle.distributed.all_gather does not.)
    """
    return paddle._C_ops.all_gather(values.detach(), 0, world_size)


def other_devices_rows(gathered, world_size, rank):
    """The rows of `gathered` ([world_size * B, ...], rank order) that came from the other devices, rank order."""
    others = paddle.to_tensor([r for r in range(world_size) if r != rank], dtype="int64")
    trailing = list(gathered.shape[1:])
    by_device = paddle.reshape(gathered, [world_size, -1, *trailing])
    return paddle.reshape(paddle.gather(by_device, others, axis=0), [-1, *trailing])


def check_options(config, spec):
    """UserError, before any work, when --gather_embeddings cannot apply to the loss."""
    if config.gather_embeddings:
        check_references("--gather_embeddings", spec)


def check_references(flag, spec):
    """UserError, before any work, when `flag` adds reference rows and the loss takes none."""
    if not spec.takes_references:
        raise UserError(f"{flag} needs a loss that compares each anchor with all other rows "
                        "(batchhardtripletloss, quadrupletloss, emlloss, rankedlistloss, "
                        f"multisimilarityloss, marginloss), not {spec.name}")


class OtherDevicesRows(Extension):
    """--gather_embeddings under several devices: the pair loss also compares each anchor with the other
    devices' batch rows, gathered inside the program in rank order."""

    @classmethod
    def of(cls, config, world_size):
        """The extension when --gather_embeddings applies (several devices), else None."""
        return cls(world_size) if config.gather_embeddings and world_size > 1 else None

    def __init__(self, world_size):
        self.world_size = world_size

    def add_to_graph(self, inputs):
        embeddings, labels = inputs.every_device_rows()
        inputs.add_references(other_devices_rows(embeddings, inputs.world_size, inputs.rank),
                              other_devices_rows(labels, inputs.world_size, inputs.rank))

    def reference_rows(self, device_batch):
        return (self.world_size - 1) * device_batch


LOSS_NOISE = "loss_noise"


class LossNoise(Extension):
    """A loss that samples pairs at random (LossSpec.takes_noise) draws them from uniform numbers fed into
    each step, [B, B + reference rows]: a stream of its own, a function of (seed, iteration, device), so a
    resumed run draws the same pairs."""

    def __init__(self, seed, rank, reference_sources):
        self.seed, self.rank = seed, rank
        self.reference_sources = reference_sources  # the extensions that add reference rows

    def add_to_graph(self, inputs):
        inputs.noise = paddle.static.data(LOSS_NOISE, [None, None], "float32")

    def before_step(self, step):
        rng = np.random.default_rng([self.seed, step.position.iteration, self.rank, 0x6E6F6973])
        rows = len(step.labels)
        candidates = rows + sum(source.reference_rows(rows) for source in self.reference_sources)
        return {LOSS_NOISE: rng.random((rows, candidates), dtype=np.float32)}


class SkipNonFinite(Extension):
    """--nan_policy=skip_batch: a step whose figures are not finite is undone (parameters and optimizer state
    put back from a copy taken before it) and counted, instead of stopping the run."""

    def __init__(self):
        self.before = None
        self.skipped = 0

    def before_step(self, step):
        self.before = checkpoint.program_state(step.graph.main)
        return {}

    def after_step(self, step, fetched):
        bad = [name for name, value in step.stats.items() if not math.isfinite(value)]
        if not bad:
            return True
        params, slots = self.before
        paddle.static.set_program_state(step.graph.main, {**params, **slots})
        self.skipped += 1
        position = step.position
        print(f"Skipped the step of iteration {position.iteration}: non-finite {', '.join(bad)} "
              f"({self.skipped} skipped so far)", flush=True)
        step.log.write({"pass": position.pass_id, "iter": position.iteration, "skipped": True,
                        "skipped_total": self.skipped, **step.stats})
        return False
