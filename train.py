"""Train an embedding network with a metric loss (and a softmax branch) as a static graph.

    python train.py --model=ResNet50 --loss_name=tripletloss

See README.md for the flags, checkpoints, resuming and finetuning.
"""
import json
import os
import signal
import time
from dataclasses import dataclass

import data
import reader
from engine import checkpoint
from utility import parse_args, print_arguments, run_cli
from utility.args import as_flag
from utility.errors import UserError
from utility.progress import format_duration

# Used with the offline digits data set for every one of these flags the user did not type,
# so that the out-of-the-box run finishes in minutes on a 2-core CPU.
DEMO_SETTINGS = {"image_shape": (3, 32, 32), "train_batch_size": 60, "total_iter_num": 150,
                 "lr_steps": [100], "test_iter_step": 50, "save_iter_step": 50}


@dataclass
class Position:
    """Where training stands: iterations done, the pass (epoch) and the batch within it."""
    iteration: int = 0
    pass_id: int = 0
    batch: int = 0


def main(argv=None):
    args = parse_args("train", argv)
    if data.use_default_dataset_if_needed(args):
        apply_demo_settings(args)
    _check_names(args)

    import paddle
    import losses
    from engine import programs

    world_size, rank = programs.distributed_env()
    leader = rank == 0
    if leader:
        print_arguments(args)
    train_list = reader.read_image_list(args.train_list, args.data_dir)
    val_list = reader.read_image_list(args.val_list, args.data_dir)
    spec = losses.get(args.loss_name)
    layout, k = spec.layout, spec.samples_each_class(args.samples_each_class)
    resume_dir = checkpoint.resolve(args.checkpoint)
    resume_state = _resume_state(resume_dir, train_list) if resume_dir else None
    pretrained_dir = checkpoint.resolve(args.pretrained_model)
    place = programs.select_place(args.use_gpu)
    loader = reader.make_train_loader(
        train_list, image_shape=args.image_shape, batch_size=args.train_batch_size, layout=layout,
        samples_each_class=k, num_workers=args.num_workers, seed=args.seed + 1,
        augment={"color_jitter": args.color_jitter, "rotate": args.rotate, "random_erasing": args.random_erasing},
        world_size=world_size, rank=rank)
    total_iters = args.total_iter_num or args.num_epochs * loader.batches_per_epoch

    if world_size > 1:
        paddle.distributed.init_parallel_env()  # before enable_static, or Paddle crashes
    paddle.enable_static()
    paddle.seed(args.seed)
    graph = programs.build_train_graph(args, train_list.num_classes, total_iters, world_size)
    exe = paddle.static.Executor(place)
    exe.run(graph.startup)

    start = Position()
    if resume_state:
        checkpoint.restore(graph.main, resume_dir)
        graph.scheduler.set_state_dict(resume_state["scheduler"])
        start = Position(**resume_state["position"])
        _log(leader, f"Resumed from {resume_dir} at iteration {start.iteration} (pass {start.pass_id})")
    elif pretrained_dir:
        checkpoint.load_matching(graph.main, pretrained_dir, log=lambda line: _log(leader, line))

    trainer = Trainer(args, graph, exe, loader, val_list, train_list.classes, total_iters, world_size, rank)
    try:
        trainer.run(start)
    finally:
        loader.close()


def apply_demo_settings(args):
    chosen = {name: value for name, value in DEMO_SETTINGS.items() if name not in args.explicit}
    for name, value in chosen.items():
        setattr(args, name, value)
    if "num_epochs" in args.explicit:
        args.total_iter_num = None
    if chosen:
        print("Demo settings for the digits data set (type a flag to override): "
              + " ".join(f"--{name}={as_flag(value)}" for name, value in chosen.items()), flush=True)


def _check_names(args):
    import losses
    import models

    if args.model not in models.MODELS:
        raise UserError(f"unknown --model {args.model}; known: {', '.join(models.MODELS)}")
    losses.get(args.loss_name)
    if args.checkpoint and args.pretrained_model:
        raise UserError("give --checkpoint (resume) or --pretrained_model (finetune), not both")


def _resume_state(directory, train_list):
    state = checkpoint.read_state(directory)
    if state is None:
        raise UserError(f"{directory} is not a train.py checkpoint (no {checkpoint.STATE_FILE}); "
                        "to start from its parameters use --pretrained_model")
    if state["classes"] != train_list.classes.tolist():
        raise UserError(f"checkpoint {directory} was trained on other classes than {train_list.source}; "
                        "use --pretrained_model to finetune on a new list")
    return state


def _log(leader, line):
    if leader:
        print(line, flush=True)


class Trainer:
    """The training loop: runs steps, prints and logs progress, evaluates, saves checkpoints."""

    def __init__(self, args, graph, exe, loader, val_list, classes, total_iters, world_size, rank):
        self.args, self.graph, self.exe, self.loader = args, graph, exe, loader
        self.val_list, self.classes, self.total_iters = val_list, classes, total_iters
        self.world_size, self.leader = world_size, rank == 0
        self.model_dir = os.path.join(args.model_save_dir, args.model)
        self.by_epochs = args.num_epochs is not None
        self.fetch_names = list(graph.fetch)
        self.since_eval = []          # per-step figures since the last evaluation, for the End pass line
        self.log_file = None
        if self.leader:
            os.makedirs(args.model_save_dir, exist_ok=True)
            self.log_file = open(os.path.join(args.model_save_dir, "log.jsonl"), "a")

    def run(self, pos):
        _log(self.leader, f"Training {self.total_iters} iterations ({self.loader.batches_per_epoch} per pass) "
                          f"from iteration {pos.iteration}")
        try:
            with StopOnInterrupt() as stop:
                while pos.iteration < self.total_iters and not stop.requested:
                    self._run_pass(pos, stop)
            if stop.requested:
                self._save_interrupted(pos)
                raise KeyboardInterrupt
        finally:
            if self.log_file:
                self.log_file.close()

    def _run_pass(self, pos, stop):
        import losses
        from engine.programs import IMAGE, LABEL

        args = self.args
        batches = iter(self.loader.epoch(pos.pass_id, start_batch=pos.batch))
        self.window_start, self.window_images = time.time(), 0
        while pos.iteration < self.total_iters and not stop.requested:
            wait_start = time.time()
            batch = next(batches, None)
            if batch is None:
                break
            images, labels = batch
            check_batch = losses.get(args.loss_name).check_batch
            if check_batch:
                check_batch(labels)
            step_start = time.time()
            values = self.exe.run(self.graph.main, feed={IMAGE: images, LABEL: labels},
                                  fetch_list=list(self.graph.fetch.values()))
            step_s = time.time() - step_start
            lr = self.graph.scheduler.get_lr()
            self.graph.scheduler.step()
            stats = dict(zip(self.fetch_names, (float(v.item()) for v in values)))
            self.since_eval.append(stats)
            self.window_images += len(labels) * self.world_size  # img/s over all devices
            if pos.batch % args.display_iter_step == 0:
                self._display(pos, lr, stats, step_s, step_start - wait_start)
            pos.iteration += 1
            pos.batch += 1
            if not self.by_epochs:
                self._iteration_milestones(pos)
        if pos.batch >= self.loader.batches_per_epoch:
            pos.pass_id, pos.batch = pos.pass_id + 1, 0
            if self.by_epochs:
                self._evaluate(pos.pass_id - 1, pos)
                self._save(pos, str(pos.pass_id - 1))

    def _save_interrupted(self, pos):
        if self.leader and pos.iteration > 0:
            name = f"{pos.pass_id}_{pos.batch}" if self.by_epochs else str(pos.iteration)
            path = self._save(pos, name)
            print(f"Interrupted: saved {path}; resume with --checkpoint={path}", flush=True)

    def _iteration_milestones(self, pos):
        last = pos.iteration == self.total_iters
        if pos.iteration % self.args.test_iter_step == 0 or last:
            self._evaluate(pos.pass_id, pos)
        if pos.iteration % self.args.save_iter_step == 0 or last:
            self._save(pos, str(pos.iteration))

    def _display(self, pos, lr, stats, step_s, reader_s):
        if not self.leader:
            return
        now = time.time()
        img_per_s = self.window_images / max(now - self.window_start, 1e-9)
        self.window_start, self.window_images = now, 0
        eta = (self.total_iters - pos.iteration) * self.args.train_batch_size / max(img_per_s, 1e-9)
        print(f"Pass {pos.pass_id}, trainbatch {pos.batch}, lr {lr:.6g}, loss_metric {stats['loss_metric']:.5f}, "
              f"loss_cls {stats['loss_cls']:.5f}, acc1 {stats['acc1']:.5f}, acc5 {stats['acc5']:.5f}, "
              f"time {step_s:2.2f} sec, {img_per_s:.1f} img/s, eta {format_duration(eta)}", flush=True)
        self._json({"pass": pos.pass_id, "iter": pos.iteration, "lr": lr, **stats, "img_per_s": img_per_s,
                    "reader_s": reader_s, "step_s": step_s})

    def _evaluate(self, pass_id, pos):
        since_eval, self.since_eval = self.since_eval, []
        if not self.leader:
            return
        recall = self._test_recall()
        means = {name: sum(s[name] for s in since_eval) / max(1, len(since_eval)) for name in self.fetch_names}
        print(f"End pass {pass_id}, train_loss_metric {means['loss_metric']:.5f}, "
              f"train_loss_cls {means['loss_cls']:.5f}, train_acc1 {means['acc1']:.5f}, "
              f"train_acc5 {means['acc5']:.5f}, test_recall {recall:.5f}", flush=True)
        self._json({"pass": pass_id, "iter": pos.iteration, "test_recall": recall,
                    **{f"train_{name}": value for name, value in means.items()}})
        self.window_start, self.window_images = time.time(), 0  # keep evaluation time out of img/s

    def _test_recall(self):
        from evaluation import metrics
        from engine.embedder import embed_list
        from engine.programs import IMAGE

        def run_batch(images):
            (out,) = self.exe.run(self.graph.test, feed={IMAGE: images}, fetch_list=[self.graph.test_embedding])
            return out

        # An unreadable validation image is reported and left out: it must not end a long run.
        features, rows = embed_list(run_batch, self.val_list, self.args, skip_bad=True, show_progress=False)
        return metrics.evaluate(features, self.val_list.labels[rows], ks=(1,), with_nmi=False)["recall@1"]

    def _save(self, pos, name):
        if not self.leader:
            return None
        state = {"position": vars(pos).copy(), "scheduler": self.graph.scheduler.state_dict(),
                 "classes": self.classes.tolist(),
                 "args": {k: v for k, v in vars(self.args).items() if k != "explicit"}}
        path = checkpoint.save_checkpoint(self.graph.main, self.model_dir, name, state)
        print(f"Saved checkpoint {path}", flush=True)
        return path

    def _json(self, record):
        self.log_file.write(json.dumps(record) + "\n")
        self.log_file.flush()


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


if __name__ == "__main__":
    run_cli(main)
