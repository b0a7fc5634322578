"""Static-graph programs shared by the scripts: device, LR schedule, train and embedding programs.

Paddle 3 builds programs in its new format (PIR), where `clone(for_test=True)` is gone:
the test program is cloned with an IrMapping right after the network is built, before
the label input, the losses and the optimizer exist, so it needs only the image.

The train program knows its extensions (engine/extensions.py) only through one interface: each adds
its inputs and changes what the metric loss sees (its embedding, reference rows, noise) before the loss
is called.
"""
import math
import os
from dataclasses import dataclass
from functools import partial

import paddle

import losses
import models
from engine.extensions import LossInputs
from engine.network_spec import NetworkSpec
from engine.optimizers import make_optimizer
from utility.errors import UserError

IMAGE = "image"
LABEL = "label"


def make_lr_scheduler(config, total_iters):
    """LR at each iteration (counted from the start of training): base LR x lr_factor."""
    return paddle.optimizer.lr.LambdaDecay(config.lr, lambda iteration: lr_factor(config, total_iters, iteration))


def lr_factor(config, total_iters, iteration):
    """Linear warm-up over --warmup_iter, then piecewise decay (x0.1 at each of --lr_steps) or cosine to 0.

    One closed form of the absolute iteration: Paddle's LinearWarmup would shift the piecewise steps
    by the warm-up, and its CosineAnnealingDecay is recursive and rises again after T_max.
    """
    if iteration < config.warmup_iter:
        return iteration / config.warmup_iter
    if config.lr_strategy == "piecewise_decay":
        return 0.1 ** sum(iteration >= step for step in config.lr_steps)
    progress = (iteration - config.warmup_iter) / max(1, total_iters - config.warmup_iter)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainGraph:
    main: object
    startup: object
    test: object                # shares parameters with main; batch norm uses running statistics
    test_image: object          # the image input of `test`
    test_embedding: object      # the inference embedding inside `test` (after the BNNeck, if any)
    fetch: dict                 # name -> value of main: loss_metric, and loss_cls, acc1, acc5 when classifying
    scheduler: object
    embedding: object = None    # the training forward pass's feature (before the neck), [B, D]


def build_network(network, num_classes):
    """The network that `network` (an engine.network_spec.NetworkSpec) describes, with a classifier over
    `num_classes` (none for 0)."""
    return models.build_model(network.model, num_classes, network.embedding_size, neck=network.neck,
                              neck_feat=network.neck_feat, last_stride=network.last_stride, stem=network.stem,
                              uncertainty=network.uncertainty, pooling=network.pooling)


def trains_classifier(config):
    """Whether the softmax classifier over the training classes gets a gradient (and is built at all)."""
    return losses.get(config.loss_name).is_classifier_branch or config.alpha > 0


def check_uncertainty(config, spec):
    """UserError unless --uncertainty True and an uncertainty loss (LossSpec.takes_uncertainty) go together: the
    head is trained only through such a loss, and such a loss needs the head."""
    if spec.takes_uncertainty and not config.uncertainty:
        raise UserError(f"{spec.name} weights each image by the uncertainty the network predicts: "
                        "give --uncertainty True")
    if config.uncertainty and not spec.takes_uncertainty:
        raise UserError(f"--uncertainty True: the uncertainty head learns only through an uncertainty loss "
                        f"(uncertaintytriplet, uncertaintysoftmax), not {spec.name}")


def build_train_graph(config, num_classes, total_iters, world_size=1, rank=0, extensions=()):
    """Network + metric loss (+ softmax branch) + optimizer, as one train program and its test clone.

    `extensions` (engine/extensions.py) add their inputs and shape the metric loss's inputs, in order.
    """
    main, startup = paddle.static.Program(), paddle.static.Program()
    with_classifier = trains_classifier(config)
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        image = paddle.static.data(IMAGE, [None, *config.image_shape], "float32")
        network = build_network(NetworkSpec.from_config(config), num_classes if with_classifier else 0)
        # The metric loss sees the feature before the BNNeck; evaluation and export the one after it
        # (the same value without a neck).
        embedding, logits, inference_embedding, log_variance = network(image)
        mapping = paddle.pir.IrMapping()
        test = main.clone(mapping)
        test.set_is_test_attr()

        label = paddle.static.data(LABEL, [None], "int64")
        loss_inputs = LossInputs(embedding, label, world_size, rank)
        for extension in extensions:
            extension.add_to_graph(loss_inputs)
        spec = losses.get(config.loss_name)
        metric_loss = spec.build_loss(embedding.shape[-1], num_classes, spec.params_from(config))
        if spec.takes_uncertainty and metric_loss is not None:
            metric_loss = partial(metric_loss, log_variance=log_variance)
        loss_metric = paddle.zeros([], "float32") if metric_loss is None else loss_inputs.call(spec, metric_loss)
        fetch = {"loss_metric": loss_metric}
        objective = loss_metric
        if with_classifier:
            loss_cls = (losses.uncertainty_softmax_loss(logits, label, log_variance, config.label_smoothing)
                        if spec.takes_uncertainty else losses.softmax_loss(logits, label, config.label_smoothing))
            objective = loss_cls if metric_loss is None else loss_metric + config.alpha * loss_cls
            fetch.update(loss_cls=loss_cls, acc1=paddle.metric.accuracy(logits, label.unsqueeze(1), k=1),
                         acc5=paddle.metric.accuracy(logits, label.unsqueeze(1), k=min(5, num_classes)))
        for term in losses.AUXILIARY.values():  # e.g. the center loss, when its weight is above 0
            auxiliary_loss = term.build_loss(embedding.shape[-1], num_classes, term.params_from(config))
            if auxiliary_loss is not None:
                objective = objective + auxiliary_loss(embedding, label)

        scheduler = make_lr_scheduler(config, total_iters)
        optimizer = make_optimizer(config, scheduler)
        if world_size > 1:
            _minimize_data_parallel(optimizer, objective, world_size)
        else:
            optimizer.minimize(objective)
    return TrainGraph(main, startup, test, mapping.look_up(image), mapping.look_up(inference_embedding),
                      fetch, scheduler, embedding)


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
    uncertainty: object = None  # sigma^2 = exp(s) [N] of each image, when the network predicts it


def build_embed_graph(config):
    """image -> inference embedding of config's NetworkSpec, for eval.py and infer.py (no classifier, batch
    norm in test mode); `config` may be the NetworkSpec itself."""
    network = NetworkSpec.from_config(config)
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        image = paddle.static.data(IMAGE, [None, *network.image_shape], "float32")
        output = build_network(network, 0)(image)
        uncertainty = None if output.log_variance is None else paddle.exp(output.log_variance)
    main.set_is_test_attr()
    return EmbedGraph(main, startup, image, output.inference_embedding, uncertainty)


def distributed_env():
    """(world_size, rank) under `python -m paddle.distributed.launch`, else (1, 0)."""
    world_size = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    return world_size, rank
