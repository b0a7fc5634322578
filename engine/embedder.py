"""Turning an image list into embeddings, for eval.py, infer.py and train.py's evaluation.

There is one embedder: an exported image -> embedding inference model run by an engine: onnxruntime on
its ONNX conversion (engine/onnx_export.py; the default on the CPU, measured faster: docs/speed.md) or
a Paddle Inference predictor (oneDNN on the CPU; the default on a GPU and for train.py's evaluation),
both 3-5x faster than the Executor here with the same features to ~1e-6 relative. A checkpoint or a training run's test program is exported to a
temporary folder first (`Embedder.from_program`); infer.py --export_model keeps the export.
"""
import hashlib
import json
import os
import shutil
import tempfile
import time

import numpy as np

import reader
from engine import device
from engine.device import usable_cores
from engine.network_spec import NetworkSpec
from utility.errors import UserError
from utility.files import write_text
from utility.progress import Progress

EXPORT_PREFIX = "inference"
EXPORT_INFO = "preprocess.json"


def read_export_info(model_dir):
    """preprocess.json of an exported model: the network's settings (NetworkSpec's fields, checked) and its
    input preprocessing."""
    prefix = os.path.join(model_dir, EXPORT_PREFIX)
    missing = [name for name in (prefix + ".json", prefix + ".pdiparams", os.path.join(model_dir, EXPORT_INFO))
               if not os.path.isfile(name)]
    if missing:
        raise UserError(f"{model_dir} is not an exported model: {', '.join(missing)} missing "
                        f"(infer.py --export_model writes {EXPORT_PREFIX}.json, {EXPORT_PREFIX}.pdiparams "
                        f"and {EXPORT_INFO})")
    path = os.path.join(model_dir, EXPORT_INFO)
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}")
    if not isinstance(info, dict):
        raise UserError(f"{path} is damaged (not a JSON object)")
    NetworkSpec.fields_of(info, f"{path}: ")  # a wrong network setting is an error naming it
    return info


def read_model_info(model):
    """The settings and preprocessing of an exported model folder, or of an ONNX file of infer.py --export_onnx."""
    from engine import onnx_export

    return onnx_export.read_onnx_info(model) if onnx_export.is_onnx_model(model) else read_export_info(model)


# What makes two exports embed alike, besides the parameters: the network's settings and the preprocessing.
FINGERPRINT_FIELDS = (*NetworkSpec.names(), "color", "mean", "std", "resize_ratio", "ink_threshold", "ink_fraction",
                      "layout")
# Network settings newer than the fingerprint enter it only away from their default (NetworkSpec.default), so that
# an export made before them keeps the fingerprint its galleries and dumps carry.
ADDED_AFTER_FINGERPRINTS = ("pooling",)


def model_fingerprint(model_dir):
    """A short hash of an exported model's parameters and preprocessing: equal fingerprints, equal embeddings.

    A gallery index keeps it, and infer.py writes it beside its dumps, so that embeddings of two
    models (or one model with two preprocessings) are never mixed in one index.
    """
    info = read_export_info(model_dir)
    digest = hashlib.sha256()
    with open(os.path.join(model_dir, EXPORT_PREFIX + ".pdiparams"), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    fields = {name: info.get(name) for name in FINGERPRINT_FIELDS}
    for name in ADDED_AFTER_FINGERPRINTS:
        if fields[name] in (None, NetworkSpec.default(name)):  # an export older than the setting, or at its default
            del fields[name]
    digest.update(json.dumps(fields, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def export(exe, program, image, embedding, out_dir, config, uncertainty=None):
    """Save `program`'s image -> embedding (and sigma^2 per image, `uncertainty`, as a second output when the
    network predicts it) with its current parameters as an inference model in out_dir.

    The model is written to a temporary folder beside out_dir, then renamed into place: a symbolic link
    standing at out_dir, or at one of its files, is replaced, never written through.
    """
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    writing = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.tmp-")
    try:
        _write_export(exe, program, image, embedding, writing, config, uncertainty)
        if os.path.islink(out_dir):
            os.unlink(out_dir)  # the link goes, its target stays as it was
        if not os.path.isdir(out_dir):
            os.replace(writing, out_dir)
            return
        for name in os.listdir(writing):  # an existing folder keeps its other files
            os.replace(os.path.join(writing, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(writing, ignore_errors=True)


def _write_export(exe, program, image, embedding, folder, config, uncertainty=None):
    import paddle

    outputs = [embedding] if uncertainty is None else [embedding, uncertainty]
    paddle.static.save_inference_model(os.path.join(folder, EXPORT_PREFIX), [image], outputs, exe, program=program)
    network = NetworkSpec.from_config(config)
    info = {**network.to_record(), **preprocess_description(network.eval_resize, network.ink_crop)}
    write_text(os.path.join(folder, EXPORT_INFO), json.dumps(info, indent=1))


def inference_threads():
    """Threads for a CPU predictor: this process's share of the cores it may run on.

    Unlike training (cli/runtime.py keeps it to one thread), oneDNN inference gains from every
    core: 313 -> 800 img/s for ResNet50 at 32x32 against the one-thread Executor (bench/README-speed.md).
    """
    return max(1, usable_cores() // int(os.environ.get("PADDLE_LOCAL_SIZE", "1")))


def preprocess_description(eval_resize, ink_crop=False):
    """The preprocessing an exported model expects, as fields of preprocess.json."""
    from reader.transforms import IMAGENET_MEAN, IMAGENET_STD, INK_FRACTION, INK_THRESHOLD, RESIZE_RATIO

    resize = ("resize the short side to round(side * resize_ratio) of the input size, then the centre crop"
              if eval_resize == "crop" else "resize the whole image to the input size")
    if ink_crop:
        resize = ("cut the square around the ink (grey < ink_threshold), the ink's longer side ink_fraction "
                  "of the square's, white beyond the image; then " + resize)
    fields = {"color": "RGB", "resize": resize, "mean": IMAGENET_MEAN.tolist(), "std": IMAGENET_STD.tolist(),
              "scale": "pixel / 255, then (x - mean) / std", "layout": "NCHW float32",
              "input": f"RGB, {resize}, ImageNet mean/std, NCHW float32"}
    if eval_resize == "crop":
        fields["resize_ratio"] = RESIZE_RATIO
    if ink_crop:
        fields.update(ink_threshold=INK_THRESHOLD, ink_fraction=INK_FRACTION)
    return fields


ENGINES = ("paddle", "onnxruntime")  # --engine (cli/args.py); why not OpenVINO: docs/speed.md


def default_engine(model, use_gpu=None):
    """The engine when none is chosen: onnxruntime on the CPU (measured the faster of the two with equal
    features: docs/speed.md) and for ONNX files; Paddle Inference on a GPU. Without Paddle's CUDA wheel the
    answer is the CPU's, and Paddle is not imported to find it out."""
    from engine import onnx_export

    if onnx_export.is_onnx_model(model) or use_gpu is False or (use_gpu is None and not device.cuda_wheel_installed()):
        return "onnxruntime"
    return "paddle" if device.use_gpu(use_gpu) else "onnxruntime"


class Embedder:
    """An exported model run by an engine: embedder(images) -> features; .info (the model's settings and
    preprocessing), .fingerprint (equal fingerprints, equal embeddings: the engine does not change it).

    `model` is an exported model folder (infer.py --export_model), run by Paddle Inference with oneDNN
    (engine "paddle") or as ONNX by onnxruntime ("onnxruntime"; engine None: default_engine), from the ONNX copy
    kept in the folder (index folders keep one) or converted in memory; or an ONNX file written by infer.py
    --export_onnx (float32 or int8), which onnxruntime runs.
    """

    def __init__(self, model, use_gpu=None, engine=None):
        from engine import onnx_export

        engine = engine or default_engine(model, use_gpu)
        if engine not in ENGINES:
            raise UserError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
        self.name = model  # what error lines call the model
        if engine == "onnxruntime" and use_gpu:
            raise UserError("--engine onnxruntime runs on the CPU here: give --use_gpu False or --engine paddle")
        if onnx_export.is_onnx_model(model):
            if engine != "onnxruntime":
                raise UserError(f"{model} is an ONNX model: run it with --engine onnxruntime")
            self.info = onnx_export.read_onnx_info(model)
            self.fingerprint = self.info["fingerprint"]
            self.run = onnx_export.OnnxRunner(model, inference_threads())
            return
        self.info = read_export_info(model)
        self.fingerprint = model_fingerprint(model)
        if engine == "onnxruntime":
            self.run = onnx_export.OnnxRunner(onnx_export.onnx_of_export(model, self.fingerprint), inference_threads())
            return
        self.run = PaddlePredictor(paddle_config(model, use_gpu), f"the exported model in {model}")

    @classmethod
    def from_program(cls, exe, program, image, embedding, config, name="the network being trained", engine="paddle",
                     uncertainty=None):
        """The embedder of a program's image -> embedding (and sigma^2, `uncertainty`) with its current parameters
        (through a temporary export); `name` says what it is in error lines."""
        folder = tempfile.mkdtemp(prefix="embedder-")
        try:
            _write_export(exe, program, image, embedding, folder, config, uncertainty)
            embedder = cls(folder, config.use_gpu, engine)  # the engine holds the parameters in memory
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        embedder.name = name
        return embedder

    def __call__(self, images):
        return self.run(images)

    @property
    def predicts_uncertainty(self):
        """The model gives each image's sigma^2 as its second output (trained with --uncertainty True)."""
        return bool(self.info.get("uncertainty"))

    def embed(self, images):
        """(features [n, D], sigma^2 [n]) of `images`; sigma^2 is None when the model predicts no uncertainty."""
        outputs = self.run.outputs(images)
        return outputs[0], (outputs[1].reshape(-1) if self.predicts_uncertainty else None)


def paddle_config(model_dir, use_gpu=None):
    """The Paddle Inference configuration of an exported model: oneDNN on all of the process's cores, or the GPU."""
    import paddle.inference as inference

    prefix = os.path.join(model_dir, EXPORT_PREFIX)
    config = inference.Config(prefix + ".json", prefix + ".pdiparams")
    config.disable_glog_info()
    if device.use_gpu(use_gpu):
        config.enable_use_gpu(256, device.gpu_id())
    else:
        config.disable_gpu()
        config.enable_onednn()
        config.set_cpu_math_library_num_threads(inference_threads())
    return config


class PaddlePredictor:
    """A Paddle Inference predictor made from a paddle.inference.Config: predictor(images) -> features."""

    def __init__(self, config, name="the exported model"):
        import paddle.inference as inference

        try:
            self.predictor = inference.create_predictor(config)
        except Exception as err:  # Paddle raises bare RuntimeError/ValueError for corrupt files
            raise UserError(f"cannot load {name}: {str(err).strip().splitlines()[-1]}")
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output_handles = [self.predictor.get_output_handle(name) for name in self.predictor.get_output_names()]

    def __call__(self, images):
        return self.outputs(images)[0]

    def outputs(self, images):
        """Every output of the model for `images`: the features, then sigma^2 when the model predicts it."""
        self.input.reshape(images.shape)
        self.input.copy_from_cpu(images)
        self.predictor.run()
        return [handle.copy_to_cpu() for handle in self.output_handles]


def checkpoint_program(config):
    """(Executor, EmbedGraph) of config.model with the parameters of the checkpoint config.pretrained_model."""
    import paddle

    from engine import checkpoint, programs

    paddle.enable_static()
    graph = programs.build_embed_graph(config)
    exe = paddle.static.Executor(device.place(config.use_gpu))
    exe.run(graph.startup)
    checkpoint.load_all_parameters(graph.program, config.pretrained_model)
    return exe, graph


def config_embedder(config):
    """The embedder of config.inference_model (an export), or else of the checkpoint config.pretrained_model."""
    if config.inference_model:
        return Embedder(config.inference_model, config.use_gpu, config.engine)
    return checkpoint_embedder(config)


def checkpoint_embedder(config):
    """The embedder of the checkpoint config.pretrained_model."""
    exe, graph = checkpoint_program(config)
    return Embedder.from_program(exe, graph.program, graph.image, graph.embedding, config,
                                 name=f"checkpoint {config.pretrained_model}", engine=config.engine,
                                 uncertainty=graph.uncertainty)


def embed_list(embedder, loader, show_progress=True, with_uncertainty=False, allow_empty=False):
    """Embed every image of `loader` (a reader.TestLoader) with `embedder(images) -> features`.

    Returns (features float32 [n, D], row_indices int64 [n]) in list order; rows are left
    out only for unreadable images when the loader skips them. A NaN or infinite embedding is a UserError
    naming the model: nothing scores or writes it. `with_uncertainty` (an Embedder whose model predicts
    it): (features, row_indices, sigma^2 float32 [n]). When every image was skipped as unreadable: a
    UserError, or with `allow_empty` zero rows (of width 0).
    """
    image_list = loader.image_list
    progress = Progress(loader.num_rows, "embedding") if show_progress else None
    features, rows, uncertainty = [], [], []
    for images, indices in loader.batches():
        if with_uncertainty:
            batch_features, batch_uncertainty = embedder.embed(images)
            uncertainty.append(np.asarray(batch_uncertainty, dtype="float32"))
        else:
            batch_features = embedder(images)
        features.append(np.asarray(batch_features, dtype="float32"))
        rows.append(np.asarray(indices, dtype="int64"))
        if progress:
            progress.update(len(indices))
    if progress:
        progress.close()
    if not features:
        if not allow_empty:
            raise UserError(f"no image of {image_list.source} could be embedded")
        empty = (np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
        return (*empty, np.zeros(0, np.float32)) if with_uncertainty else empty
    features = np.concatenate(features)
    bad = int((~np.isfinite(features).all(axis=1)).sum())
    if bad:
        raise UserError(f"{getattr(embedder, 'name', 'the model')} embeds {bad} of {len(features)} images of "
                        f"{image_list.source} as NaN or infinite values (its parameters overflow: a diverged "
                        "training?); nothing was written or scored")
    if with_uncertainty:
        return features, np.concatenate(rows), np.concatenate(uncertainty)
    return features, np.concatenate(rows)


def test_loader(config, image_list, *, skip_bad, rows=None, num_workers=None):
    """A reader.TestLoader of `image_list` with the run's input shape, evaluation preprocessing and batch size."""
    return reader.TestLoader(image_list, image_shape=config.image_shape, batch_size=config.test_batch_size,
                             num_workers=config.num_workers if num_workers is None else num_workers,
                             skip_bad=skip_bad, rows=rows, eval_resize=config.eval_resize, ink_crop=config.ink_crop,
                             max_pixels=config.max_image_pixels)


def share_loader(config, image_list, skip_bad):
    """A test loader of this process's contiguous share of `image_list` (all of it without a launcher).

    Open it before the embedder: its workers must be forked before Paddle starts its threads
    (a worker forked from a process with live oneDNN/MKL threads can crash).
    """
    from engine.programs import distributed_env

    world_size, rank = distributed_env()
    share = np.array_split(np.arange(len(image_list.paths)), world_size)[rank]
    return test_loader(config, image_list, skip_bad=skip_bad, rows=share)


def embed_shards(embedder, loader, exchange_dir, with_uncertainty=False):
    """embed_list of a share_loader, the shares of paddle.distributed.launch's processes gathered.

    Device 0 gathers the shares, in list order, through files in `exchange_dir` (a folder all
    processes see) and returns (features, rows), or (features, rows, sigma^2) `with_uncertainty`; the
    other processes return as many Nones. One process alone simply embeds the list.
    """
    from engine.programs import distributed_env

    world_size, rank = distributed_env()
    embedded = embed_list(embedder, loader, show_progress=rank == 0, with_uncertainty=with_uncertainty)
    if world_size == 1:
        return embedded
    os.makedirs(exchange_dir, exist_ok=True)
    _save_share(exchange_dir, rank, embedded)
    if rank > 0:
        return (None,) * len(embedded)
    shares = [_load_share(exchange_dir, r) for r in range(world_size)]
    shutil.rmtree(exchange_dir, ignore_errors=True)
    print(f"Gathered the embeddings of {world_size} processes: " + ", ".join(str(len(s[1])) for s in shares)
          + " images", flush=True)
    return tuple(np.concatenate(parts) for parts in zip(*shares))


def exchange_folder(near, name):
    """A folder for embed_shards' hand-over of list `name`, unique to this launch, inside `near`."""
    launch = os.environ.get("PADDLE_MASTER", "single").replace(":", "-").replace("/", "-")
    return os.path.join(near, f".embedding-shards-{launch}-{name}")


def _save_share(folder, rank, arrays):
    path = os.path.join(folder, f"share-{rank}.npz")
    with open(path + ".tmp", "wb") as f:
        np.savez(f, *arrays)
    os.replace(path + ".tmp", path)


def _load_share(folder, rank, timeout_s=3600):
    path = os.path.join(folder, f"share-{rank}.npz")
    start = time.time()
    while not os.path.exists(path):
        if time.time() - start > timeout_s:
            raise UserError(f"process {rank} did not write its embeddings to {path}")
        time.sleep(0.2)
    with np.load(path) as share:
        return tuple(share[f"arr_{i}"] for i in range(len(share.files)))
