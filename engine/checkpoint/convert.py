"""Convert ImageNet ResNet weights of torchvision, timm or PaddleClas once into this toolkit's parameter folder.

    python -m engine.checkpoint.convert --weights resnet50-11ad3fa6.pth --model ResNet50 --out pretrained/ResNet50

--weights is a torchvision state dict (.pth), a timm ResNet .safetensors or a PaddleClas ResNet .pdparams;
it is read without running pickled code (foreign.py) and renamed to our parameter names (imagenet.py),
checked against --model. The folder gets model.safetensors and nothing else: plain parameters, which
train.py, eval.py and infer.py take as --pretrained_model=pretrained/ResNet50 (as they take the file itself;
the folder loads faster and never needs the conversion again).
"""
import argparse
import os

from engine.checkpoint import foreign, imagenet, storage
from utility.errors import UserError, run_main


def convert(weights, model, out_dir):
    """Write the backbone of `weights` under our names to out_dir/model.safetensors; returns that path."""
    import safetensors.numpy

    expected = parameter_shapes(model)
    state = foreign.read_parameter_file(weights)
    if imagenet.convention(state) is None:
        raise UserError(f"{weights} holds no torchvision/timm or PaddleClas ResNet weights (it has e.g. "
                        f"{storage.few_names(list(state))}; no layer1.0.conv1.weight nor blocks.0.conv0.conv.weight)")
    arrays = imagenet.to_our_names(state, weights, expected)
    path = os.path.join(out_dir, storage.PARAMS_FILE)
    if os.path.lexists(path):
        raise UserError(f"{path} exists already; choose another --out or delete it")
    os.makedirs(out_dir, exist_ok=True)
    partial = f"{path}.tmp-{os.getpid()}"
    try:
        with open(partial, "xb") as f:
            f.write(safetensors.numpy.save(arrays))
        os.replace(partial, path)
    finally:
        if os.path.lexists(partial):
            os.remove(partial)
    return path


def parameter_shapes(model):
    """{name: shape} of every parameter of backbone `model` (batch-norm statistics included), built eagerly."""
    from models import build_model

    return {parameter.name: tuple(parameter.shape) for parameter in build_model(model).parameters()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True,
                        help="a torchvision .pth, timm .safetensors or PaddleClas .pdparams file")
    parser.add_argument("--model", required=True, help="the backbone they are for: ResNet18, ResNet34 or ResNet50")
    parser.add_argument("--out", required=True, help="the folder to write model.safetensors into")
    args = parser.parse_args(argv)
    path = convert(args.weights, args.model, args.out)
    print(f"Wrote {path}: finetune from it with --model={args.model} --pretrained_model={args.out}")


if __name__ == "__main__":
    run_main(main)
