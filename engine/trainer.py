"""The training loop: steps, progress lines and log.jsonl, periodic evaluation, checkpoints, Ctrl-C.

Training length is counted in iterations only: --num_epochs N is N passes' worth of batches,
evaluated and saved after every pass. Checkpoints are named by the iteration they were saved at.
"""
import glob
import itertools
import json
import math
import os
import signal
import time
from dataclasses import dataclass

import numpy as np

from engine import checkpoint
from engine.embedder import Embedder, embed_list
from engine.extensions import Step
from engine.programs import IMAGE, LABEL
from evaluation.evaluator import Evaluator
from utility.errors import UserError
from utility.progress import format_duration

CLASSIFIER_FIGURES = ("loss_cls", "acc1", "acc5")
LOG_FILE = "log.jsonl"
CURVES_FILE = "curves.png"
PROBE_IMAGES = 2  # the fixed batch a network must embed to finite values before it is evaluated or saved


@dataclass
class Position:
    """Where training stands: iterations done, the pass (epoch) and the batch within it."""
    iteration: int = 0
    pass_id: int = 0
    batch: int = 0

    def advance(self, batches_per_pass):
        self.iteration += 1
        self.batch += 1
        self.settle(batches_per_pass)

    def settle(self, batches_per_pass):
        """A position at the end of a pass is the start of the next (checkpoints of earlier versions were
        saved as (pass, batches_per_pass))."""
        if self.batch >= batches_per_pass:
            self.pass_id, self.batch = self.pass_id + 1, 0


@dataclass(frozen=True)
class Schedule:
    """How long to train and when to evaluate and save, in iterations."""
    total: int
    evaluate_every: int
    save_every: int

    @classmethod
    def of(cls, config, batches_per_pass):
        if config.num_epochs is not None:
            return cls(config.num_epochs * batches_per_pass, batches_per_pass, batches_per_pass)
        return cls(config.total_iter_num, config.test_iter_step, config.save_iter_step)

    def evaluates_after(self, iteration):
        return iteration % self.evaluate_every == 0 or iteration == self.total

    def saves_after(self, iteration):
        return iteration % self.save_every == 0 or iteration == self.total


def claim_save_dir(config, resuming):
    """A new run does not write over another run's checkpoints and log, unless --overwrite=True."""
    if resuming or config.overwrite:
        return
    latest = sorted(glob.glob(os.path.join(glob.escape(config.model_save_dir), "*", checkpoint.LATEST)))
    log = os.path.join(config.model_save_dir, LOG_FILE)
    earlier = latest + ([log] if os.path.lexists(log) else [])
    if not earlier:
        return
    own_latest = os.path.join(config.model_save_dir, config.model, checkpoint.LATEST)
    resume = f"resume it with --checkpoint={own_latest}, " if own_latest in latest else ""
    raise UserError(f"{config.model_save_dir} holds another run ({', '.join(earlier)}): {resume}choose a new "
                    "--model_save_dir, or pass --overwrite=True to replace it")


class RunLog:
    """log.jsonl in the save directory: one strict-JSON record per line (null, never NaN)."""

    def __init__(self, path, fresh):
        self.file = None
        if path:
            if os.path.islink(path):
                raise UserError(f"{path} is a symbolic link: the log is not written through links")
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self.file = open(path, "w" if fresh else "a")
            if not fresh and self.file.tell() and not _ends_with_newline(path):
                self.file.write("\n")  # a record cut by a kill stays alone on its damaged line

    def write(self, record):
        if self.file:
            clean = {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
                     for key, value in record.items()}
            self.file.write(json.dumps(clean, allow_nan=False) + "\n")
            self.file.flush()

    def close(self):
        if self.file:
            self.file.close()


class Validator:
    """Recall@1 of the current network on the validation list, embedded by the one Embedder."""

    def __init__(self, loader, labels):
        self.loader = loader      # a reader.TestLoader built once per run: its workers are reused
        self.labels = labels

    def recall_at_1(self, exe, graph, config):
        embedder = Embedder.from_program(exe, graph.test, graph.test_image, graph.test_embedding, config)
        features, rows = embed_list(embedder, self.loader, show_progress=False)
        return Evaluator(["recall_at_k"], ks=(1,))(features, self.labels[rows])["recall@1"]


def _best_recall(config, model_dir):
    """Recall@1 of the checkpoint `best` names, from the run's log.jsonl (-inf when unknown): a resumed run
    moves `best` only for a better one."""
    from evaluation.plot import read_records

    best = checkpoint.link_target(model_dir, checkpoint.BEST)
    log = os.path.join(config.model_save_dir, LOG_FILE)
    if not best or not best.isdigit() or not os.path.isfile(log):
        return -math.inf
    recalls = [record["test_recall"] for record in read_records(log) if record.get("iter") == int(best)
               and isinstance(record.get("test_recall"), (int, float))]
    return recalls[-1] if recalls else -math.inf


def _ends_with_newline(path):
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _figures(values, computed, prefix=""):
    """'name value, ' for each figure the graph computes: without a classifier its figures are left out
    (log.jsonl has them as null; a printed 'nan' would read as a diverged run)."""
    return "".join(f"{prefix}{name} {value:.5f}, " for name, value in values.items() if name in computed)


class Trainer:
    """Runs the steps of one training run on one device and does everything around them.

    What a run adds to the plain loop comes from its `extensions` (engine/extensions.py), called in order.
    """

    def __init__(self, *, config, graph, exe, loader, validator, classes, schedule, check_batch=None,
                 extensions=(), world_size=1, rank=0, fresh_log=True):
        self.config, self.graph, self.exe, self.loader = config, graph, exe, loader
        self.extensions = list(extensions)
        self.validator, self.classes, self.schedule = validator, classes, schedule
        self.check_batch = check_batch
        self.world_size, self.leader = world_size, rank == 0
        self.model_dir = os.path.join(config.model_save_dir, config.model)
        self.fetch_names = list(graph.fetch)
        self.since_eval = []        # per-step figures since the last evaluation, for the End pass line
        self.last_saved = None
        self.last_recall = None     # (iteration, Recall@1) of the last evaluation
        self.best_recall = -math.inf if fresh_log or not self.leader else _best_recall(config, self.model_dir)
        self.window_start, self.window_images = time.time(), 0
        self.log = RunLog(os.path.join(config.model_save_dir, LOG_FILE) if self.leader else None, fresh_log)

    def run(self, position):
        """Train from `position` to the end of the schedule; returns the last checkpoint saved."""
        position.settle(self.loader.batches_per_epoch)
        self._print(f"Training {self.schedule.total} iterations ({self.loader.batches_per_epoch} per pass) "
                    f"from iteration {position.iteration}")
        try:
            with StopOnInterrupt() as stop:
                while position.iteration < self.schedule.total and not stop.requested:
                    for extension in self.extensions:
                        extension.before_pass(position.pass_id, self.exe, self.graph)
                    self.window_start, self.window_images = time.time(), 0  # their work is not img/s
                    self._run_pass(position, stop)
            if stop.requested:
                self._save_interrupted(position)
                raise KeyboardInterrupt
        finally:
            self.log.close()
        return self.last_saved

    def _run_pass(self, position, stop):
        batches = self.loader.epoch(position.pass_id, start_batch=position.batch)
        wait_start = time.time()
        for images, labels in batches:
            reader_s = time.time() - wait_start
            self._step(position, images, labels, reader_s)
            position.advance(self.loader.batches_per_epoch)
            self._milestones(position)
            if position.iteration >= self.schedule.total or stop.requested:
                break
            wait_start = time.time()
        batches.close()

    def _step(self, position, images, labels, reader_s):
        if self.check_batch:
            self.check_batch(labels)
        step = Step(self.graph, position, labels, self.log)
        feed = {IMAGE: images, LABEL: labels}
        for extension in self.extensions:
            feed.update(extension.before_step(step))
        fetch_lists = [extension.fetch_list() for extension in self.extensions]
        step_start = time.time()
        values = self.exe.run(self.graph.main, feed=feed,
                              fetch_list=[*self.graph.fetch.values(), *itertools.chain(*fetch_lists)])
        step_s = time.time() - step_start
        lr = self.graph.scheduler.get_lr()
        self.graph.scheduler.step()
        stats = step.stats = dict(zip(self.fetch_names, (float(v.item()) for v in values)))
        if not self._after_step(step, values[len(self.fetch_names):], fetch_lists):
            return
        self._stop_if_diverged(position, stats)
        self.since_eval.append(stats)
        self.window_images += len(labels) * self.world_size  # img/s over all devices
        if position.batch % self.config.display_iter_step == 0:
            self._display(position, lr, stats, step_s, reader_s)

    def _after_step(self, step, fetched, fetch_lists):
        """Each extension's after_step with the values it asked for; False when one discarded the step."""
        for extension, asked in zip(self.extensions, fetch_lists):
            own, fetched = fetched[:len(asked)], fetched[len(asked):]
            if not extension.after_step(step, own):
                return False
        return True

    def _stop_if_diverged(self, position, stats):
        bad = {name: value for name, value in stats.items() if not math.isfinite(value)}
        if not bad:
            return
        self.log.write({"pass": position.pass_id, "iter": position.iteration, "diverged": True, **stats})
        raise UserError(f"training diverged at iteration {position.iteration}: "
                        f"{', '.join(f'{name} {value}' for name, value in bad.items())}; nothing was saved "
                        f"after it; {self._resume_advice()}")

    def _resume_advice(self):
        if self.last_saved:
            return (f"the last good checkpoint is {self.last_saved}: resume from it with "
                    f"--checkpoint={self.last_saved} and a lower --lr")
        return "no checkpoint was saved before it; start again with a lower --lr"

    def _check_probe(self, position):
        """UserError unless the network embeds a small fixed batch to finite values: parameters can be finite
        yet so large that every embedding overflows, and such a network is neither evaluated nor saved."""
        shape = (PROBE_IMAGES, *self.config.image_shape)
        probe = np.random.default_rng(0).standard_normal(shape).astype("float32")
        embedding, = self.exe.run(self.graph.test, feed={IMAGE: probe}, fetch_list=[self.graph.test_embedding])
        if np.isfinite(embedding).all():
            return
        self.log.write({"pass": position.pass_id, "iter": position.iteration, "diverged": True})
        raise UserError(f"training diverged by iteration {position.iteration}: the network embeds a fixed probe "
                        f"batch to NaN or infinite values (its parameters overflow); checkpoint "
                        f"{position.iteration} was not saved; {self._resume_advice()}")

    def _milestones(self, position):
        if self.schedule.evaluates_after(position.iteration):
            self._evaluate(position)
        if self.schedule.saves_after(position.iteration):
            self._save(position)

    def _display(self, position, lr, stats, step_s, reader_s):
        if not self.leader:
            return
        now = time.time()
        img_per_s = self.window_images / max(now - self.window_start, 1e-9)
        self.window_start, self.window_images = now, 0
        eta = (self.schedule.total - position.iteration) * self.config.train_batch_size / max(img_per_s, 1e-9)
        shown = {name: stats.get(name, math.nan) for name in ("loss_metric", *CLASSIFIER_FIGURES)}
        print(f"Pass {position.pass_id}, trainbatch {position.batch}, lr {lr:.6g}, {_figures(shown, stats)}"
              f"time {step_s:2.2f} sec, {img_per_s:.1f} img/s, eta {format_duration(eta)}", flush=True)
        self.log.write({"pass": position.pass_id, "iter": position.iteration, "lr": lr, **shown,
                        "img_per_s": img_per_s, "reader_s": reader_s, "step_s": step_s, "processes": self.world_size})

    def _evaluate(self, position):
        since_eval, self.since_eval = self.since_eval, []
        if not self.leader:
            return
        self._check_probe(position)
        recall = self.validator.recall_at_1(self.exe, self.graph, self.config)
        self.last_recall = (position.iteration, recall)
        means = {name: float(np.mean([s[name] for s in since_eval])) if since_eval and name in self.fetch_names
                 else math.nan for name in ("loss_metric", *CLASSIFIER_FIGURES)}
        pass_id = position.pass_id - (position.batch == 0)  # the pass of the step just done
        print(f"End pass {pass_id}, {_figures(means, self.fetch_names, 'train_')}test_recall {recall:.5f}", flush=True)
        self.log.write({"pass": pass_id, "iter": position.iteration, "test_recall": recall,
                        **{f"train_{name}": value for name, value in means.items()}})
        self._plot()
        self.window_start, self.window_images = time.time(), 0  # keep evaluation time out of img/s

    def _plot(self):
        """Redraw <model_save_dir>/curves.png from log.jsonl: losses, learning rate, test Recall@1. A picture
        is never worth a run: a failure is one note, and training and its saves go on."""
        from evaluation.plot import plot_training

        self.log.file.flush()
        try:
            plot_training(self.log.file.name, os.path.join(self.config.model_save_dir, CURVES_FILE))
        except Exception as err:  # noqa: BLE001 - matplotlib, the disk, a damaged log: all only cost the picture
            print(f"note: could not draw {CURVES_FILE}: {type(err).__name__}: {err}", flush=True)

    def _save(self, position):
        if not self.leader:
            return None
        self._check_probe(position)  # before `latest` can move
        records = {extension.name: extension.state() for extension in self.extensions if extension.name}
        state = checkpoint.RunState.of_run(vars(position), self.graph.scheduler.state_dict(), self.classes,
                                           self.config, records)
        self.last_saved = checkpoint.save_checkpoint(self.graph.main, self.model_dir, str(position.iteration),
                                                     state.to_dict())
        print(f"Saved checkpoint {self.last_saved}", flush=True)
        self._keep_best_and_prune(position)
        return self.last_saved

    def _keep_best_and_prune(self, position):
        """`best` onto this checkpoint if its Recall@1 is the best so far; then all but the last
        --keep_checkpoints deleted (never `latest`'s or `best`'s). A failed deletion is a note, not the run's end."""
        if self.last_recall and self.last_recall[0] == position.iteration and self.last_recall[1] > self.best_recall:
            self.best_recall = self.last_recall[1]
            checkpoint.point_best(self.model_dir, position.iteration)
        if self.config.keep_checkpoints:
            try:
                deleted = checkpoint.prune(self.model_dir, self.config.keep_checkpoints)
            except UserError as err:
                print(f"note: {err}", flush=True)
                return
            if deleted:
                print(f"Deleted old checkpoint(s) {', '.join(deleted)} (--keep_checkpoints "
                      f"{self.config.keep_checkpoints})", flush=True)

    def _save_interrupted(self, position):
        if self.leader and position.iteration > 0 and not self.schedule.saves_after(position.iteration):
            self._save(position)
        if self.leader and self.last_saved:
            print(f"Interrupted: saved {self.last_saved}; resume with --checkpoint={self.last_saved}", flush=True)

    def _print(self, line):
        if self.leader:
            print(line, flush=True)


class StopOnInterrupt:
    """The first Ctrl-C asks the loop to stop after the current step (and save); a second one stops at once."""

    def __enter__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("Stopping after this step (Ctrl-C again to stop at once)...", flush=True)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)
        return False
