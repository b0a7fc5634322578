"""Static-graph programs shared by the scripts: device, LR schedule, train and embedding programs.

Paddle 3 builds programs in its new format (PIR), where `clone(for_test=True)` is gone:
the test program is cloned with an IrMapping right after the network is built, before
the label input, the losses and the optimizer exist, so it needs only the image.
"""
import math
import os
from dataclasses import dataclass

import paddle

import losses
import models
from utility.errors import UserError

IMAGE = "image"
LABEL = "label"


def select_place(use_gpu):
    """The device to run on: GPU when asked (default: when Paddle was built with CUDA), else CPU."""
    with_cuda = paddle.is_compiled_with_cuda()
    if use_gpu is None:
        use_gpu = with_cuda
    if not use_gpu:
        return paddle.CPUPlace()
    if not with_cuda:
        raise UserError("--use_gpu=True, but this Paddle was built without CUDA: "
                        "install paddlepaddle-gpu, or pass --use_gpu=False")
    # paddle.distributed.launch gives each process its GPU in FLAGS_selected_gpus.
    return paddle.CUDAPlace(int(os.environ.get("FLAGS_selected_gpus", "0").split(",")[0]))


def make_lr_scheduler(args, total_iters):
    """LR at each iteration (counted from the start of training): base LR x lr_factor."""
    return paddle.optimizer.lr.LambdaDecay(args.lr, lambda iteration: lr_factor(args, total_iters, iteration))


def lr_factor(args, total_iters, iteration):
    """Linear warm-up over --warmup_iter, then piecewise decay (x0.1 at each of --lr_steps) or cosine to 0.

    One closed form of the absolute iteration: Paddle's LinearWarmup would shift the piecewise steps
    by the warm-up, and its CosineAnnealingDecay is recursive and rises again after T_max.
    """
    if iteration < args.warmup_iter:
        return iteration / args.warmup_iter
    if args.lr_strategy == "piecewise_decay":
        return 0.1 ** sum(iteration >= step for step in args.lr_steps)
    progress = (iteration - args.warmup_iter) / max(1, total_iters - args.warmup_iter)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainGraph:
    main: object
    startup: object
    test: object                # shares parameters with main; batch norm uses running statistics
    test_embedding: object      # the embedding value inside `test`
    fetch: dict                 # name -> value of main: loss_metric, loss_cls, acc1, acc5
    scheduler: object


def build_train_graph(args, num_classes, total_iters, world_size=1):
    """Network + metric loss + softmax branch + Momentum/L2, as one train program and its test clone."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        image = paddle.static.data(IMAGE, [None, *args.image_shape], "float32")
        embedding, logits = models.build_model(args.model, num_classes, args.embedding_size)(image)
        mapping = paddle.pir.IrMapping()
        test = main.clone(mapping)
        test.set_is_test_attr()

        label = paddle.static.data(LABEL, [None], "int64")
        loss_cls = losses.softmax_loss(logits, label, args.label_smoothing)
        metric_loss = _metric_loss(args, embedding.shape[-1], num_classes)
        if metric_loss is None:
            loss_metric, objective = paddle.zeros([], "float32"), loss_cls
        else:
            loss_metric = metric_loss(embedding, label)
            objective = loss_metric + args.alpha * loss_cls
        fetch = {"loss_metric": loss_metric, "loss_cls": loss_cls,
                 "acc1": paddle.metric.accuracy(logits, label.unsqueeze(1), k=1),
                 "acc5": paddle.metric.accuracy(logits, label.unsqueeze(1), k=min(5, num_classes))}

        scheduler = make_lr_scheduler(args, total_iters)
        optimizer = paddle.optimizer.Momentum(scheduler, momentum=args.momentum,
                                              weight_decay=paddle.regularizer.L2Decay(args.weight_decay))
        if world_size > 1:
            _minimize_data_parallel(optimizer, objective, world_size)
        else:
            optimizer.minimize(objective)
    return TrainGraph(main, startup, test, mapping.look_up(embedding), fetch, scheduler)


def _metric_loss(args, embedding_dim, num_classes):
    return losses.get(args.loss_name).build(args, embedding_dim, num_classes)


def _minimize_data_parallel(optimizer, objective, world_size):
    """Each device computes its loss on its own share; gradients are averaged over devices."""
    params_grads = optimizer.backward(objective)  # (not append_backward: it leaves the LR dtype unset)
    averaged = []
    for param, grad in params_grads:
        if grad is None:  # batch-norm statistics are parameters without a gradient
            continue
        paddle.distributed.all_reduce(grad)
        averaged.append((param, paddle.scale(grad, 1.0 / world_size)))
    optimizer.apply_gradients(averaged)


@dataclass
class EmbedGraph:
    program: object
    startup: object
    image: object
    embedding: object


def build_embed_graph(args):
    """image -> embedding, for eval.py and infer.py (no classifier, batch norm in test mode)."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        image = paddle.static.data(IMAGE, [None, *args.image_shape], "float32")
        embedding, _ = models.build_model(args.model, 0, args.embedding_size)(image)
    main.set_is_test_attr()
    return EmbedGraph(main, startup, image, embedding)


def distributed_env():
    """(world_size, rank) under `python -m paddle.distributed.launch`, else (1, 0)."""
    world_size = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    return world_size, rank
