"""Train an embedding network with a metric loss (and a softmax branch) as a static graph.

    python train.py --model=ResNet50 --loss_name=tripletloss

See README.md for the flags, checkpoints, resuming and finetuning.
"""
import os

import reader
from cli.args import print_arguments
from cli.config import check_model_and_loss, resolve
from cli.runtime import run_cli
from engine import checkpoint
from utility.errors import UserError


def main(argv=None):
    config = resolve("train", argv)
    check_model_and_loss(config)

    import losses
    from engine import programs
    from engine.trainer import Schedule, Trainer, Validator

    world_size, rank = programs.distributed_env()
    leader = rank == 0
    if leader:
        print_arguments(config)
    spec = losses.get(config.loss_name)
    _check_options(config, spec)
    train_list = reader.read_image_list(config.train_list, config.data_dir, with_camera=config.with_camera)
    val_list = reader.read_image_list(config.val_list, config.data_dir, with_camera=config.with_camera)
    resume_dir, resume_state = _resume(config, train_list, leader)
    loaders = _open_loaders(config, spec, train_list, val_list, world_size, rank)
    try:
        schedule = Schedule.of(config, loaders["train"].batches_per_epoch)
        graph, exe = _build(config, train_list.num_classes, schedule.total, world_size, rank)
        start = _restore_or_finetune(config, graph, resume_dir, resume_state, leader)
        dac, memory = _dac_and_memory(config, spec, train_list, loaders, graph, resume_dir, resume_state,
                                      world_size, rank)
        trainer = Trainer(config=config, graph=graph, exe=exe, loader=loaders["train"],
                          validator=Validator(loaders["val"], val_list.labels), classes=train_list.classes,
                          schedule=schedule, check_batch=spec.check_batch, takes_noise=spec.takes_noise,
                          dac=dac, memory=memory, world_size=world_size, rank=rank,
                          fresh_log=resume_state is None)
        trainer.run(start)
    finally:
        for loader in loaders.values():
            if loader:
                loader.close()


def _check_options(config, spec):
    from engine import xbm

    if config.checkpoint and config.pretrained_model:
        raise UserError("give --checkpoint (resume) or --pretrained_model (finetune), not both")
    if config.dac_clusters and spec.layout == "shuffle":
        raise UserError(f"--dac_clusters needs a pair loss (P x K or triplet batches), not {config.loss_name}")
    xbm.check_options(config, spec)


def _resume(config, train_list, leader):
    """(checkpoint folder, its state) to resume from, or (None, None); the save folder is claimed for this run."""
    from engine.trainer import claim_save_dir

    if leader:  # a save killed mid-way leaves temporary folders, and perhaps `latest` on one of them
        removed = checkpoint.remove_stale_temporaries(os.path.join(config.model_save_dir, config.model))
        _print(leader, f"Removed leftovers of interrupted saves: {', '.join(removed)}" if removed else "")
    resume_dir = checkpoint.resolve(config.checkpoint)
    resume_state = _resume_state(resume_dir, train_list) if resume_dir else None
    claim_save_dir(config, resuming=resume_state is not None)
    return resume_dir, resume_state


def _open_loaders(config, spec, train_list, val_list, world_size, rank):
    """The training batches, the validation list and (divide and conquer) the training list to embed.

    Their worker processes are forked here, before Paddle starts its threads.
    """
    from engine.embedder import test_loader

    leader = rank == 0
    train = reader.make_train_loader(
        train_list, image_shape=config.image_shape, batch_size=config.train_batch_size, layout=spec.layout,
        samples_each_class=spec.samples_each_class(config.samples_each_class), num_workers=config.num_workers,
        seed=config.seed + 1, world_size=world_size, rank=rank, augment=reader.loaders.augment_from_args(config),
        max_pixels=config.max_image_pixels)
    # An unreadable validation image is reported and left out: it must not end a long run.
    val = test_loader(config, val_list, skip_bad=True, num_workers=config.num_workers if leader else 0)
    cluster = test_loader(config, train_list, skip_bad=True) if config.dac_clusters and leader else None
    return {"train": train, "val": val, "cluster": cluster}


def _build(config, num_classes, total_iters, world_size, rank):
    """(train graph, Executor) with the startup program run."""
    import paddle

    from engine import device, programs

    place = device.place(config.use_gpu)
    if world_size > 1:
        paddle.distributed.init_parallel_env()  # before enable_static, or Paddle crashes
    paddle.enable_static()
    paddle.seed(config.seed)
    graph = programs.build_train_graph(config, num_classes, total_iters, world_size, rank)
    exe = paddle.static.Executor(place)
    exe.run(graph.startup)
    return graph, exe


def _restore_or_finetune(config, graph, resume_dir, resume_state, leader):
    """The Position to start from, after loading a checkpoint to resume or parameters to finetune."""
    from engine.trainer import Position

    if resume_state:
        checkpoint.restore(graph.main, resume_dir)
        graph.scheduler.set_state_dict(resume_state.scheduler)
        start = Position(**resume_state.position)
        _print(leader, f"Resumed from {resume_dir} at iteration {start.iteration} (pass {start.pass_id})")
        return start
    if config.pretrained_model:
        checkpoint.load_matching(graph.main, config.pretrained_model, log=lambda line: _print(leader, line),
                                 model=config.model)
    return Position()


def _dac_and_memory(config, spec, train_list, loaders, graph, resume_dir, resume_state, world_size, rank):
    """Divide and conquer and the cross-batch memory of this run (None when off), resumed if need be."""
    from engine import xbm

    dim = graph.test_embedding.shape[-1]
    dac = None
    if config.dac_clusters:
        from engine.dac import DivideAndConquer

        dac = DivideAndConquer(config, train_list, loaders["train"], loaders["cluster"], spec.layout,
                               spec.samples_each_class(config.samples_each_class), dim, world_size, rank)
        dac.restore(resume_state.extensions.get("dac") if resume_state else None)
    memory = xbm.CrossBatchMemory.of(config, dim, world_size, rank)
    if memory and resume_state and not memory.restore(resume_state.extensions.get("xbm"), resume_dir):
        _print(rank == 0, f"Note: {resume_dir} holds no cross-batch memory; it starts empty")
    return dac, memory


def _resume_state(directory, train_list):
    state = checkpoint.RunState.read(directory)
    if state is None:
        raise UserError(f"{directory} is not a train.py checkpoint (no {checkpoint.STATE_FILE}); "
                        "to start from its parameters use --pretrained_model")
    if state.classes != train_list.classes.tolist():
        raise UserError(f"checkpoint {directory} was trained on other classes than {train_list.source}; "
                        "use --pretrained_model to finetune on a new list")
    return state


def _print(leader, line):
    if leader and line:
        print(line, flush=True)


def run():
    """The console entry point (pyproject.toml)."""
    run_cli(main)


if __name__ == "__main__":
    run()
