"""Run under `python -m paddle.distributed.launch --nproc_per_node 2`: one step of pair losses with the
other device's rows as references, gathered inside a static program (engine/extensions.OtherDevicesRows).

Each rank prints one line `RESULT {json}`: its embeddings, labels, losses, and a parameter after one
data-parallel step. tests/engine/test_xbm.py checks the losses against numpy on the global batch.
"""
import json

import numpy as np
import paddle

import losses
from cli.args import defaults
from engine import programs
from engine.extensions import LossInputs, OtherDevicesRows

LOSSES = ["batchhardtripletloss", "quadrupletloss", "emlloss", "rankedlistloss", "multisimilarityloss", "marginloss"]


def main():
    world_size, rank = programs.distributed_env()
    paddle.distributed.init_parallel_env()  # before enable_static
    paddle.enable_static()
    rng = np.random.default_rng(100 + rank)
    inputs = rng.normal(size=(6, 5)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2 + rank, 2 + rank])  # classes 0, 1 on both devices, one of each alone
    noise = rng.uniform(1e-6, 1 - 1e-6, size=(6, 6 * world_size)).astype(np.float32)
    weights = np.random.default_rng(7).normal(size=(5, 4)).astype(np.float32)  # the same on every device
    options = defaults("train", margin=0.3, margin_beta_per_class=False)
    main_program, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main_program, startup):
        x = paddle.static.data("x", [None, 5], "float32")
        y = paddle.static.data("y", [None], "int64")
        u = paddle.static.data("u", [None, None], "float32")
        linear = paddle.nn.Linear(5, 4, weight_attr=paddle.ParamAttr(
            initializer=paddle.nn.initializer.Assign(weights)), bias_attr=False)
        embedding = linear(x)
        loss_inputs = LossInputs(embedding, y, world_size, rank)
        OtherDevicesRows(world_size).add_to_graph(loss_inputs)
        references, reference_labels = loss_inputs.references, loss_inputs.reference_labels
        values = {}
        for name in LOSSES:
            spec = losses.get(name)
            loss_fn = spec.build_loss(4, 0, spec.params_from(options))
            noise_arg = (u,) if spec.takes_noise else ()
            values[name] = loss_fn(embedding, y, *noise_arg, references=references, reference_labels=reference_labels)
        optimizer = paddle.optimizer.SGD(learning_rate=0.5)
        programs._minimize_data_parallel(optimizer, values["batchhardtripletloss"], world_size)
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(startup)
    fetched = exe.run(main_program, feed={"x": inputs, "y": labels, "u": noise},
                      fetch_list=[embedding, references, reference_labels, *values.values()])
    after = np.array(paddle.static.global_scope().find_var(linear.weight.name).get_tensor())
    result = {"rank": rank, "inputs": inputs.tolist(), "embedding": fetched[0].tolist(), "labels": labels.tolist(), "noise": noise.tolist(),
              "references": fetched[1].tolist(), "reference_labels": fetched[2].tolist(),
              "losses": {name: float(v.item()) for name, v in zip(values, fetched[3:])},
              "weights_before": weights.tolist(), "weights_after": after.tolist()}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
