"""One training run from a resolved configuration (cli.config.resolve): what train.py does, callable in process.

The order matters: the options are checked before any work; the save folder is locked for the whole run,
then claimed before anything is written to it; the loaders fork their worker processes before Paddle starts
its threads.
"""
import os

import reader
from engine import checkpoint, optimizers
from utility.errors import UserError


def train(config):
    """Train as `config` says, resuming or finetuning if it asks to; returns the last checkpoint saved."""
    import losses
    from engine import programs

    world_size, rank = programs.distributed_env()
    spec = losses.get(config.loss_name)
    check_options(config, spec)
    with lock_save_dir(config, leader=rank == 0):
        return _train(config, spec, world_size, rank)


def lock_save_dir(config, leader):
    """The save folder's lock, held for the whole run by device 0 (training, resuming and --overwrite alike):
    a second run into the folder stops at once, naming the process that holds it."""
    import contextlib

    from utility.locks import FolderLock

    if not leader:
        return contextlib.nullcontext()
    return FolderLock(config.model_save_dir, "training run")


def _train(config, spec, world_size, rank):
    from engine.trainer import Schedule, Trainer, Validator

    train_list = reader.read_image_list(config.train_list, config.data_dir, with_camera=config.with_camera)
    val_list = reader.read_image_list(config.val_list, config.data_dir, with_camera=config.with_camera)
    resume_dir, resume_state = _resume(config, train_list, rank == 0)
    train_loader, val_loader = _open_loaders(config, spec, train_list, val_list, world_size, rank)
    extensions = []
    try:
        extensions = run_extensions(config, spec, train_list, train_loader, world_size, rank)
        schedule = Schedule.of(config, train_loader.batches_per_epoch)
        graph, exe = _build(config, train_list.num_classes, schedule.total, extensions, world_size, rank)
        start = _restore_or_finetune(config, graph, resume_dir, resume_state, extensions, rank == 0)
        trainer = Trainer(config=config, graph=graph, exe=exe, loader=train_loader,
                          validator=Validator(val_loader, val_list.labels), classes=train_list.classes,
                          schedule=schedule, check_batch=spec.check_batch, extensions=extensions,
                          world_size=world_size, rank=rank, fresh_log=resume_state is None)
        return trainer.run(start)
    finally:
        for opened in (train_loader, val_loader, *extensions):
            if opened:
                opened.close()


def check_options(config, spec):
    """UserError, before any work, for options that cannot go together (the extensions' own included)."""
    from engine import dac, extensions, programs, xbm

    if config.checkpoint and config.pretrained_model:
        raise UserError("give --checkpoint (resume) or --pretrained_model (finetune), not both")
    for check in (dac.check_options, xbm.check_options, extensions.check_options, programs.check_uncertainty):
        check(config, spec)


def run_extensions(config, spec, train_list, train_loader, world_size, rank):
    """The extensions of this run, in the order they shape the loss's inputs and see each step: a step
    undone under --nan_policy=skip_batch is seen by none after it (its rows stay out of the memory);
    reference rows are added in the order other devices' rows, then the memory; divide and conquer masks
    them all; the loss noise covers them all."""
    from engine.dac import DivideAndConquer
    from engine.extensions import LossNoise, OtherDevicesRows, SkipNonFinite
    from engine.xbm import MemoryExtension

    found = [SkipNonFinite() if config.nan_policy == "skip_batch" else None,
             OtherDevicesRows.of(config, world_size),
             MemoryExtension.of(config, world_size, rank),
             DivideAndConquer.of(config, spec, train_list, train_loader, world_size, rank)]
    found = [extension for extension in found if extension]
    if spec.takes_noise:
        found.append(LossNoise(config.seed, rank, reference_sources=list(found)))
    return found


def _resume(config, train_list, leader):
    """(checkpoint folder, its RunState) to resume from, or (None, None); the save folder is claimed for this run."""
    from engine.trainer import claim_save_dir

    if leader:  # a save killed mid-way leaves temporary folders, and perhaps `latest` on one of them
        removed = checkpoint.remove_stale_temporaries(os.path.join(config.model_save_dir, config.model))
        _print(leader, f"Removed leftovers of interrupted saves: {', '.join(removed)}" if removed else "")
    resume_dir = checkpoint.resolve(config.checkpoint)
    resume_state = _resume_state(resume_dir, train_list) if resume_dir else None
    claim_save_dir(config, resuming=resume_state is not None)
    return resume_dir, resume_state


def _resume_state(directory, train_list):
    state = checkpoint.RunState.read(directory)
    if state is None:
        raise UserError(f"{directory} is not a train.py checkpoint (no {checkpoint.STATE_FILE}); "
                        "to start from its parameters use --pretrained_model")
    if state.classes != train_list.classes.tolist():
        raise UserError(f"checkpoint {directory} was trained on other classes than {train_list.source}; "
                        "use --pretrained_model to finetune on a new list")
    return state


def _open_loaders(config, spec, train_list, val_list, world_size, rank):
    """The training batches and the validation list; their worker processes are forked here."""
    from engine.embedder import test_loader

    train_loader = reader.make_train_loader(
        train_list, image_shape=config.image_shape, batch_size=config.train_batch_size, layout=spec.layout,
        samples_each_class=spec.samples_each_class(config.samples_each_class), num_workers=config.num_workers,
        seed=config.seed + 1, world_size=world_size, rank=rank, augment=reader.loaders.augment_from_args(config),
        max_pixels=config.max_image_pixels, fixed_k=bool(spec.fixed_k))
    # An unreadable validation image is reported and left out: it must not end a long run.
    val_loader = test_loader(config, val_list, skip_bad=True, num_workers=config.num_workers if rank == 0 else 0)
    return train_loader, val_loader


def _build(config, num_classes, total_iters, extensions, world_size, rank):
    """(train graph, Executor) with the startup program run."""
    import paddle

    from engine import device, programs

    place = device.place(config.use_gpu)
    if world_size > 1:
        paddle.distributed.init_parallel_env()  # before enable_static, or Paddle crashes
    paddle.enable_static()
    paddle.seed(config.seed)
    graph = programs.build_train_graph(config, num_classes, total_iters, world_size, rank, extensions)
    exe = paddle.static.Executor(place)
    exe.run(graph.startup)
    return graph, exe


def _restore_or_finetune(config, graph, resume_dir, resume_state, extensions, leader):
    """The Position to start from, after loading a checkpoint to resume (extensions included) or parameters
    to finetune."""
    from engine.trainer import Position

    if resume_state:
        _check_nothing_dropped(resume_dir, resume_state, extensions)
        _check_same_optimizer(config, resume_dir, resume_state)
        checkpoint.restore(graph.main, resume_dir)
        graph.scheduler.set_state_dict(resume_state.scheduler)
        for extension in extensions:
            if extension.name:
                extension.restore(resume_state.extensions.get(extension.name), resume_dir)
        start = Position(**resume_state.position)
        _print(leader, f"Resumed from {resume_dir} at iteration {start.iteration} (pass {start.pass_id})")
        return start
    if config.pretrained_model:
        checkpoint.load_matching(graph.main, config.pretrained_model, log=lambda line: _print(leader, line),
                                 model=config.model)
    return Position()


def _check_same_optimizer(config, resume_dir, resume_state):
    """A resume continues with the optimizer that saved the checkpoint."""
    saved = resume_state.args.get("optimizer", optimizers.DEFAULT)
    if saved != config.optimizer:
        raise UserError(f"{resume_dir} was trained with --optimizer={saved}: resume with it, or start from its "
                        f"parameters with --pretrained_model")


def _check_nothing_dropped(resume_dir, resume_state, extensions):
    """A resume continues the run as it was or is refused: the state of an extension this run does not have
    (e.g. the cross-batch memory, when --xbm_size is not given) is never dropped without a word."""
    running = {extension.name for extension in extensions if extension.name}
    dropped = sorted(set(resume_state.extensions) - running)
    if dropped:
        flags = [f"--{name}={value}" for name, value in sorted(resume_state.args.items())
                 if name.startswith(tuple(f"{record}_" for record in dropped))]
        raise UserError(f"{resume_dir} holds the state of {', '.join(dropped)}, which this run does not have: resume "
                        f"with its settings ({' '.join(flags) or 'see its state.json'}), or start from its "
                        "parameters alone with --pretrained_model")


def _print(leader, line):
    if leader and line:
        print(line, flush=True)
