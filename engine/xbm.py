"""Cross-batch memory (XBM; Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020).

The memory holds the last N (embedding, label) rows that each device trained on, on the host, and is
fed into the train program every step as XBM_FEATURES [N, D] float32 / XBM_LABELS [N] int64
(MemoryExtension, an extension of the loop: engine/extensions.py); the pair loss compares the device's
anchors with its batch and these rows.

Exact order of the memory (a ring):
- Each device has N slots, all labelled -1 (empty, ignored by the loss) at the start.
- After step t, from --xbm_start_iter on, the device's B batch embeddings of that step (computed by the
  forward pass of step t, fetched from the program) are written in batch order into slots
  w, w+1, ..., w+B-1 (mod N), and the write position w advances by B (mod N). The oldest rows are
  overwritten first; with B > N only the batch's last N rows are kept.
- The program sees the slots in slot order, not in age order: the losses find pairs by label, and
  marginloss's noise column for slot j is B + (gathered rows) + j. Step t sees the rows of steps
  before t only: the batch itself is already among the candidates, so it is not counted twice.
- Before --xbm_start_iter nothing is written and every slot is fed with label -1: the loss is the
  plain loss. (As in the paper, the memory starts after the embedding has settled a little.)
- With several devices the program gathers every device's batch rows, so each process keeps every
  device's ring (same write position) and device 0 can save them all with the checkpoint; each
  device feeds its own ring.

Checkpoints: `state()` goes into the checkpoint's state.json (engine/checkpoint/ writes it
atomically): the rings as base64 of their little-endian float32 / int64 bytes, which is exact and
takes 4/3 x 4 bytes per embedding value (about 5.3 x N x D x devices bytes, 22 MB for N = 8192,
D = 512, one device). `restore(state)` makes a resumed run continue as if never stopped.
"""
import base64

import numpy as np
import paddle

from engine.extensions import Extension, check_references
from utility.errors import UserError

IGNORE = -1  # label of an empty slot (losses/common.py IGNORE)
XBM_FEATURES = "xbm_features"
XBM_LABELS = "xbm_labels"


def check_options(config, spec):
    """UserError, before any work, when --xbm_size / --xbm_start_iter cannot apply."""
    for name in ("xbm_size", "xbm_start_iter"):
        if getattr(config, name) < 0:
            raise UserError(f"--{name} must be 0 or more, got {getattr(config, name)}")
    if config.xbm_size:
        check_references("--xbm_size", spec)


class CrossBatchMemory:
    """The rings of `world_size` devices, N slots each, of which device `rank` is fed to the program."""

    def __init__(self, size, dim, *, world_size=1, rank=0, start_iter=0):
        self.size, self.dim, self.world_size, self.rank, self.start_iter = size, dim, world_size, rank, start_iter
        self.features = np.zeros((world_size, size, dim), np.float32)
        self.labels = np.full((world_size, size), IGNORE, np.int64)
        self.write = 0     # the slot the next row goes to
        self.filled = 0    # slots written so far (at most N)

    def active(self, iteration):
        return iteration >= self.start_iter

    def feed(self, iteration):
        """Feed entries of this device's ring for step `iteration` (all labels -1 before --xbm_start_iter)."""
        labels = self.labels[self.rank] if self.active(iteration) else np.full(self.size, IGNORE, np.int64)
        return {XBM_FEATURES: self.features[self.rank], XBM_LABELS: labels}

    def update(self, iteration, features, labels):
        """Write step `iteration`'s batch rows: `features` [world_size * B, D], `labels` [world_size * B], rank order."""
        if not self.active(iteration):
            return
        features = np.asarray(features, np.float32).reshape(self.world_size, -1, self.dim)
        labels = np.asarray(labels, np.int64).reshape(self.world_size, -1)
        rows = labels.shape[1]
        skipped = max(0, rows - self.size)             # B > N: only the batch's last N rows stay
        slots = (self.write + skipped + np.arange(rows - skipped)) % self.size
        self.features[:, slots] = features[:, skipped:]
        self.labels[:, slots] = labels[:, skipped:]
        self.write = int((self.write + rows) % self.size)
        self.filled = min(self.size, self.filled + rows)

    def contents(self, rank=None):
        """(features, labels) of a device's written rows, oldest first (inspection and tests)."""
        rank = self.rank if rank is None else rank
        order = (self.write - self.filled + np.arange(self.filled)) % self.size
        return self.features[rank, order], self.labels[rank, order]

    def state(self):
        """The memory as a JSON-able dict, exact (see the module docstring for its size)."""
        return {"size": self.size, "dim": self.dim, "world_size": self.world_size, "write": self.write,
                "filled": self.filled, "features_float32": _encode(self.features, "<f4"),
                "labels_int64": _encode(self.labels, "<i8")}

    def restore(self, state, source="the checkpoint"):
        """Continue from `state()` of a saved run; None (a checkpoint without memory) starts empty."""
        if state is None:
            return False
        try:
            saved = (int(state["size"]), int(state["dim"]), int(state["world_size"]))
        except (KeyError, TypeError, ValueError) as err:
            raise _damaged(source, err) from None
        if saved != (self.size, self.dim, self.world_size):
            raise UserError(f"{source} holds a cross-batch memory of {saved[0]} rows x {saved[1]} dims on "
                            f"{saved[2]} device(s); this run has --xbm_size {self.size}, {self.dim} dims, "
                            f"{self.world_size} device(s): resume with the same settings")
        try:
            features = _decode(state["features_float32"], "<f4", self.features.shape).astype(np.float32)
            labels = _decode(state["labels_int64"], "<i8", self.labels.shape).astype(np.int64)
            write, filled = int(state["write"]), int(state["filled"])
        except (KeyError, TypeError, ValueError) as err:  # (base64's binascii.Error is a ValueError)
            raise _damaged(source, err) from None
        if not (0 <= write < self.size and 0 <= filled <= self.size):
            raise _damaged(source, f"write {write}, filled {filled} with {self.size} rows")
        self.features, self.labels, self.write, self.filled = features, labels, write, filled
        return True


class MemoryExtension(Extension):
    """The memory as an extension of the loop: its rows join the loss's references, each step feeds them
    and writes the step's batch rows, checkpoints save the rings under "xbm"."""
    name = "xbm"

    @classmethod
    def of(cls, config, world_size, rank):
        """The memory of --xbm_size / --xbm_start_iter (checked by check_options), or None when it is off."""
        return cls(config.xbm_size, config.xbm_start_iter, world_size, rank) if config.xbm_size else None

    def __init__(self, size, start_iter, world_size, rank):
        self.size, self.start_iter, self.world_size, self.rank = size, start_iter, world_size, rank
        self.memory = None      # the CrossBatchMemory, made when the embedding's size is known
        self.batch_rows = None  # every device's batch (embeddings, labels), rank order, in the program

    def add_to_graph(self, inputs):
        dim = inputs.embedding.shape[-1]
        self.memory = CrossBatchMemory(self.size, dim, world_size=self.world_size, rank=self.rank,
                                       start_iter=self.start_iter)
        inputs.add_references(paddle.static.data(XBM_FEATURES, [self.size, dim], "float32"),
                              paddle.static.data(XBM_LABELS, [self.size], "int64"))
        self.batch_rows = inputs.every_device_rows()

    def fetch_list(self):
        return list(self.batch_rows)

    def reference_rows(self, device_batch):
        return self.size

    def before_step(self, step):
        return self.memory.feed(step.position.iteration)

    def after_step(self, step, fetched):
        self.memory.update(step.position.iteration, *fetched)
        return True

    def state(self):
        return self.memory.state()

    def restore(self, state, source):
        if not self.memory.restore(state, source) and self.rank == 0:
            print(f"Note: {source} holds no cross-batch memory; it starts empty", flush=True)


def _damaged(source, why):
    return UserError(f"{source}: the cross-batch memory saved in its state.json (xbm) is damaged ({why}); "
                     "resume from another checkpoint")


def _encode(array, dtype):
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def _decode(text, dtype, shape):
    return np.frombuffer(base64.b64decode(text), dtype=dtype).reshape(shape).copy()
