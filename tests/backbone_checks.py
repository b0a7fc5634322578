"""Checks every backbone must pass, for the tests of one backbone (tests/models/test_<backbone>.py)."""
import contextlib

import numpy as np
import paddle
from paddle_modes import static_mode

from cli.args import defaults
from engine import programs
from engine.embedder import Embedder, export
from models import build_model


def exported_features(model, out_dir, size=32, batch=2, engine=None, **network):
    """(Executor features, exported model's features) of `model`'s embedding program with its start-up weights:
    the program is exported as infer.py --export_model does and run by `engine` (None: the default engine of
    eval.py, infer.py and the retrieval tools)."""
    config = defaults("eval", model=model, image_shape=(3, size, size), use_gpu=False, **network)
    images = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    with static_mode():
        graph = programs.build_embed_graph(config)
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            exe = paddle.static.Executor(paddle.CPUPlace())
            exe.run(graph.startup)
            executed, = exe.run(graph.program, feed={programs.IMAGE: images}, fetch_list=[graph.embedding])
            export(exe, graph.program, graph.image, graph.embedding, str(out_dir), config)
    return executed, Embedder(str(out_dir), use_gpu=False, engine=engine)(images)


@contextlib.contextmanager
def shapes_only(batch, size):
    """A placeholder image batch [batch, 3, size, size] in a fresh static program: networks built and called on it
    give their outputs' shapes, and no parameter is drawn or run (an eager ResNet-50 spends ~0.5 s drawing its
    random weights). Read the shapes inside the block: the program, and the outputs with it, ends with it."""
    with static_mode(), paddle.static.program_guard(paddle.static.Program(), paddle.static.Program()):
        yield paddle.static.data("image", [batch, 3, size, size], "float32")


def uninitialised_parameters(name, num_classes=0, embedding_size=0, **options):
    """The parameters (names, shapes, trainable) of build_model(...), their values never initialised (LazyGuard):
    for checks of names and counts, about 0.5 s less per ResNet-50-sized build."""
    with paddle.LazyGuard():
        return build_model(name, num_classes, embedding_size, **options).parameters()
