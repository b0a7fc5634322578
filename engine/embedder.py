"""Turning an image list into embeddings, for eval.py, infer.py and train.py's evaluation.

Two embedders with the same `embed` method:
  CheckpointEmbedder  builds the image -> embedding static program and loads a checkpoint;
  InferenceEmbedder   runs an exported inference model with Paddle Inference.
`export` writes the former as the latter.
"""
import json
import os

import reader
from engine import checkpoint
from utility.args import as_flag
from utility.errors import UserError
from utility.progress import Progress

# The network's shape, and the loss (for eval.py's test_loss), unless the user types them.
SETTINGS_FROM_CHECKPOINT = ("model", "embedding_size", "image_shape",
                            "loss_name", "margin", "samples_each_class", "triplet_mining")
EXPORT_PREFIX = "inference"
EXPORT_INFO = "preprocess.json"


def adopt_checkpoint_settings(args, directory):
    """Take SETTINGS_FROM_CHECKPOINT from the checkpoint's training run unless typed."""
    state = checkpoint.read_state(directory) if directory else None
    if not state:
        return
    adopted = []
    for name in SETTINGS_FROM_CHECKPOINT:
        value = state["args"][name]
        value = tuple(value) if name == "image_shape" else value
        if getattr(args, name) == value:
            continue
        if name in args.explicit:
            print(f"Note: the checkpoint was trained with --{name}={as_flag(value)}, "
                  f"you gave {as_flag(getattr(args, name))}", flush=True)
        else:
            setattr(args, name, value)
            adopted.append(f"--{name}={as_flag(value)}")
    if adopted:
        print(f"From the checkpoint's training run: {' '.join(adopted)}", flush=True)


def embed_list(run_batch, image_list, args, skip_bad=False, show_progress=True):
    """Embed every image of `image_list` with `run_batch(images) -> features`.

    Returns (features float32 [n, D], row_indices int64 [n]) in list order; rows are left
    out only for unreadable images under skip_bad.
    """
    import numpy as np

    batches = reader.make_test_loader(image_list, image_shape=args.image_shape, batch_size=args.test_batch_size,
                                      num_workers=args.num_workers, skip_bad=skip_bad)
    progress = Progress(len(image_list.paths), "embedding") if show_progress else None
    features, rows = [], []
    for images, indices in batches:
        features.append(np.asarray(run_batch(images), dtype="float32"))
        rows.append(np.asarray(indices, dtype="int64"))
        if progress:
            progress.update(len(indices))
    if progress:
        progress.close()
    if not features:
        raise UserError(f"no image of {image_list.source} could be embedded")
    return np.concatenate(features), np.concatenate(rows)


class CheckpointEmbedder:
    """The image -> embedding program with a checkpoint's parameters, run by an Executor."""

    def __init__(self, args, directory):
        import paddle

        from engine import programs

        place = programs.select_place(args.use_gpu)
        paddle.enable_static()
        self.graph = programs.build_embed_graph(args)
        self.exe = paddle.static.Executor(place)
        self.exe.run(self.graph.startup)
        checkpoint.load_all_parameters(self.graph.program, directory)

    def __call__(self, images):
        from engine.programs import IMAGE

        (out,) = self.exe.run(self.graph.program, feed={IMAGE: images}, fetch_list=[self.graph.embedding])
        return out

    def export(self, out_dir, args):
        """Save image -> embedding as a Paddle inference model in out_dir, with its preprocessing."""
        import paddle

        os.makedirs(out_dir, exist_ok=True)
        paddle.static.save_inference_model(os.path.join(out_dir, EXPORT_PREFIX), [self.graph.image],
                                           [self.graph.embedding], self.exe, program=self.graph.program)
        info = {"model": args.model, "embedding_size": args.embedding_size, "image_shape": list(args.image_shape),
                "input": "RGB, resize short side, centre crop, ImageNet mean/std, NCHW float32"}
        with open(os.path.join(out_dir, EXPORT_INFO), "w") as f:
            json.dump(info, f, indent=1)
        print(f"Exported the inference model to {out_dir}", flush=True)


class InferenceEmbedder:
    """An exported inference model run by a Paddle Inference predictor."""

    def __init__(self, model_dir, use_gpu):
        import paddle.inference as inference

        prefix = os.path.join(model_dir, EXPORT_PREFIX)
        if not os.path.exists(prefix + ".json") or not os.path.exists(prefix + ".pdiparams"):
            raise UserError(f"{model_dir} is not an exported model (expected {EXPORT_PREFIX}.json and "
                            f"{EXPORT_PREFIX}.pdiparams, written by infer.py --export_model)")
        with open(os.path.join(model_dir, EXPORT_INFO)) as f:
            self.info = json.load(f)
        config = inference.Config(prefix + ".json", prefix + ".pdiparams")
        config.disable_glog_info()
        if use_gpu:
            config.enable_use_gpu(256, 0)
        else:
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(os.cpu_count() or 1)
        self.predictor = inference.create_predictor(config)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])

    def __call__(self, images):
        self.input.reshape(images.shape)
        self.input.copy_from_cpu(images)
        self.predictor.run()
        return self.output.copy_to_cpu()
