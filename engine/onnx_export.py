"""ONNX: an exported inference model converted by paddle2onnx, run by onnxruntime, and quantized to int8.

    infer.py --pretrained_model=CKPT --export_onnx=model.onnx [--quantize=int8]

writes model.onnx (float32) and model.preprocess.json: the exported model's preprocess.json (the network's
settings and input preprocessing) plus the ONNX input/output names, the precision and the fingerprint.
With --quantize=int8 also model.int8.onnx and model.int8.preprocess.json: onnxruntime's static
quantization, calibrated on images of --calibration_list. `Embedder(path, engine="onnxruntime")` runs either.
"""
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile

import numpy as np

from utility.errors import UserError
from utility.files import write_atomically, write_text

# 13: the first opset whose DequantizeLinear takes an axis, which per-channel int8 weights need.
OPSET = 13
INT8_SUFFIX = ".int8"
CALIBRATION_BATCH = 10  # images per calibration run (onnxruntime keeps only each tensor's min and max)


def description_path(onnx_path):
    """model.onnx -> model.preprocess.json, beside it."""
    return onnx_path.removesuffix(".onnx") + ".preprocess.json"


def int8_path(onnx_path):
    """model.onnx -> model.int8.onnx."""
    return onnx_path.removesuffix(".onnx") + INT8_SUFFIX + ".onnx"


def is_onnx_model(path):
    return str(path).endswith(".onnx") and os.path.isfile(path)


def convert(model_dir):
    """The ONNX model (bytes) of an exported Paddle inference model, by paddle2onnx (PIR .json program)."""
    import paddle2onnx

    from engine.embedder import EXPORT_PREFIX

    prefix = os.path.join(model_dir, EXPORT_PREFIX)
    try:
        # optimize_tool "None": polygraphy, paddle2onnx's default, tries to pip-install onnx_graphsurgeon at run
        # time; onnxruntime folds constants and fuses batch norm itself when it loads the model.
        model = paddle2onnx.export(prefix + ".json", prefix + ".pdiparams", save_file=None, opset_version=OPSET,
                                   enable_onnx_checker=True, optimize_tool="None", verbose=False)
    except Exception as err:  # paddle2onnx logs the cause and leaves its result unbound
        raise UserError(f"paddle2onnx could not convert the exported model in {model_dir}: {err}")
    if not model:
        raise UserError(f"paddle2onnx could not convert the exported model in {model_dir}")
    return model


BESIDE_EXPORT = "inference.onnx"  # an export folder's own ONNX copy (index folders keep one: retrieval/indexing.py)


def onnx_of_export(model_dir, fingerprint):
    """The ONNX model of an exported model folder (a path or bytes): the copy kept in the folder (keep_beside_export)
    when it was made from these very parameters, else converted now (paddle2onnx, which imports Paddle: ~1 s)."""
    path = os.path.join(model_dir, BESIDE_EXPORT)
    if is_onnx_model(path):
        try:
            if read_onnx_info(path)["fingerprint"] == fingerprint:
                return path
        except UserError:
            pass  # a damaged copy: converted instead, as without one
    return convert(model_dir)


def keep_beside_export(model_dir):
    """Write the export's ONNX model into its folder, so that onnx_of_export need not convert it again; False (and
    nothing written) when paddle2onnx cannot convert this model, whose embedders then run on Paddle Inference."""
    try:
        export_onnx(model_dir, os.path.join(model_dir, BESIDE_EXPORT))
    except UserError:
        return False
    return True


def export_onnx(model_dir, onnx_path):
    """Write the float32 ONNX model of the exported model `model_dir` to onnx_path, its description beside it."""
    from engine.embedder import model_fingerprint, read_export_info

    model = convert(model_dir)
    names = _input_output_names(model)
    write_atomically(onnx_path, lambda f: f.write(model))
    info = {**read_export_info(model_dir), **names, "precision": "float32",
            "fingerprint": model_fingerprint(model_dir), "opset": OPSET}
    write_text(description_path(onnx_path), json.dumps(info, indent=1))
    return info


def read_onnx_info(onnx_path):
    """The description written beside an ONNX model by export_onnx or quantize_int8, checked."""
    from engine.network_spec import NetworkSpec

    path = description_path(onnx_path)
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(f"{onnx_path} has no readable description {path} (infer.py --export_onnx writes it): {err}")
    if not isinstance(info, dict) or not {"input_name", "fingerprint", "image_shape"} <= set(info):
        raise UserError(f"{path} is damaged (not the description infer.py --export_onnx writes)")
    NetworkSpec.fields_of(info, f"{path}: ")
    return info


def _input_output_names(model):
    import onnx

    graph = onnx.load_model_from_string(model).graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value.name for value in graph.input if value.name not in initializers]
    return {"input_name": inputs[0], "output_name": graph.output[0].name}


class OnnxRunner:
    """An ONNX model (a path or bytes) run by onnxruntime on the CPU: runner(images) -> features."""

    def __init__(self, model, threads):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # not the warnings about initializers paddle2onnx leaves unused
        # Idle threads sleep instead of spinning: the reader's decoding workers share the cores. Measured with
        # other jobs on the 2 cores (load ~3.7, ResNet18 32x32, batch 50, 3 rounds): 1000 / 649 / 659 img/s
        # without spinning against 489 / 594 / 373 with it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own error classes for damaged files
            raise UserError(f"onnxruntime cannot load the model: {str(err).strip().splitlines()[-1]}")
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images):
        return self.outputs(images)[0]

    def outputs(self, images):
        """Every output of the model for `images`: the features, then sigma^2 when the model predicts it."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})


def quantize_int8(onnx_path, calibration_batches):
    """Write the int8 model of the float32 ONNX model onnx_path beside it (int8_path), with its description.

    onnxruntime's static quantization: QDQ format, int8 weights per output channel, uint8 activations whose
    ranges are the min/max over `calibration_batches` (float32 [b, 3, H, W] arrays with the model's
    preprocessing). Returns the int8 model's path.
    """
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnxruntime.set_default_logger_severity(3)  # not the warnings about initializers paddle2onnx leaves unused
    info = read_onnx_info(onnx_path)

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration_batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {info["input_name"]: batch}

    out_path = int8_path(onnx_path)
    folder = tempfile.mkdtemp(prefix="quantize-")
    try:
        prepared, quantized = os.path.join(folder, "prepared.onnx"), os.path.join(folder, "int8.onnx")
        # Shape inference and graph fusion first, as onnxruntime advises: measured on a tiny ResNet18, the int8
        # features' cosine to float32 was 0.998 on average with it, 0.995 without.
        quant_pre_process(onnx_path, prepared)
        with PerTensorFallbacks() as fallbacks:
            quantize_static(prepared, quantized, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        if fallbacks.names:
            print(f"note: {len(fallbacks.names)} normalisation scale vector(s) quantized per tensor "
                  f"(onnxruntime has no channel axis in a 1-d weight), e.g. {fallbacks.names[0]}", flush=True)
        with open(quantized, "rb") as f:
            model = f.read()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    write_atomically(out_path, lambda f: f.write(model))
    digest = hashlib.sha256(info["fingerprint"].encode() + model).hexdigest()[:16]
    write_text(description_path(out_path), json.dumps({**info, "precision": "int8", "fingerprint": digest,
                                                       "quantized_from": os.path.basename(onnx_path)}, indent=1))
    return out_path


class PerTensorFallbacks(logging.Filter):
    """While open, onnxruntime's warning "Axis 1 is out-of-range for weight 'NAME' with rank 1" is collected
    into .names instead of printed. ResNet50_IBN_a's split normalisations (instance norm on half the channels,
    batch norm on the rest: not folded into a convolution) give one per half; onnxruntime then quantizes
    those scale vectors per tensor. Measured harmless (docs/speed.md, int8): the warning is not a fault."""
    PATTERN = re.compile(r"Axis \S+ is out-of-range for weight '([^']+)' with rank 1$")

    def __init__(self):
        super().__init__()
        self.names = []

    def filter(self, record):
        found = self.PATTERN.match(record.getMessage())
        if found:
            self.names.append(found.group(1))
        return found is None

    def __enter__(self):
        logging.getLogger().addFilter(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeFilter(self)


def calibration_batches(loader):
    """Every image of a reader.TestLoader (made with calibration_rows), in batches of CALIBRATION_BATCH."""
    images = [image for batch, _ in loader.batches() for image in batch]
    if not images:
        raise UserError(f"no image of {loader.image_list.source} could be read for calibration")
    images = np.stack(images).astype(np.float32)
    return [images[start:start + CALIBRATION_BATCH] for start in range(0, len(images), CALIBRATION_BATCH)]


def calibration_rows(list_size, num_images):
    """num_images rows spread evenly over a list (lists are often sorted by class): every class has its say."""
    return np.unique(np.linspace(0, list_size - 1, min(num_images, list_size)).round().astype(np.int64))


def write_onnx_exports(config, model_dir):
    """infer.py's --export_onnx (and --quantize int8) of the exported model model_dir; the paths written."""
    import reader
    from engine.embedder import test_loader

    if is_onnx_model(model_dir):
        raise UserError(f"--export_onnx converts a Paddle export (a folder of --export_model) or a checkpoint; "
                        f"{model_dir} is already ONNX")
    export_onnx(model_dir, config.export_onnx)
    written = [config.export_onnx]
    if config.quantize == "int8":
        image_list = reader.read_image_list(config.calibration_list or config.train_list, config.data_dir,
                                            require_labels=False)
        rows = calibration_rows(len(image_list.paths), config.calibration_images)
        # Decoded in this process: Paddle's threads are running, and forking workers now could crash them.
        with test_loader(config, image_list, skip_bad=True, rows=rows, num_workers=0) as loader:
            batches = calibration_batches(loader)
        print(f"Calibrating int8 ranges on {sum(map(len, batches))} images of {image_list.source}", flush=True)
        written.append(quantize_int8(config.export_onnx, batches))
    return written
