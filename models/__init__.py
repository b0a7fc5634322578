"""Network builders, chosen by name with --model.

`build_model(name, num_classes, embedding_size, neck=, neck_feat=, last_stride=, stem=, pooling=)` returns a
paddle.nn.Layer mapping images [N, 3, H, W] (float32) to a NetworkOutput
(metric_embedding, logits, inference_embedding). The same layer serves eager code and
static programs; every parameter has a fixed name (see models/resnet.py, models/resnet_ibn.py,
models/se_resnet.py, models/se_resnext.py, models/mobilenet_v3.py and models/head.py for the scheme).
"""
from paddle.utils import unique_name

from models.head import NECK_FEATS, NECKS, EmbeddingNet, NetworkOutput
from models.layers import POOLINGS, STEMS
from models.mobilenet_v3 import mobilenet_v3_large
from models.resnet import resnet18, resnet34, resnet50
from models.resnet_ibn import resnet50_ibn_a
from models.se_resnet import se_resnet50
from models.se_resnext import se_resnext50_32x4d
from utility.errors import UserError

MODELS = {
    "ResNet18": resnet18,
    "ResNet34": resnet34,
    "ResNet50": resnet50,
    "SE_ResNeXt50_32x4d": se_resnext50_32x4d,
    "ResNet50_IBN_a": resnet50_ibn_a,
    "SE_ResNet50": se_resnet50,
    "MobileNetV3_large": mobilenet_v3_large,
}
LAST_STRIDES = (1, 2)


def build_model(name, num_classes=0, embedding_size=0, neck="none", neck_feat="after", last_stride=2,
                stem="imagenet", uncertainty=False, pooling="avg"):
    """Build backbone `name` with the embedding/neck/classifier head.

    Returns an EmbeddingNet whose forward gives NetworkOutput(metric_embedding, logits,
    inference_embedding); logits is None when num_classes == 0. neck="bnneck" adds the
    BNNeck (models/head.py); last_stride=1 keeps the resolution of the last stage; stem="small"
    starts with a 3x3 stride-1 convolution instead of 7x7 stride 2 (models/layers.py STEMS);
    uncertainty=True adds the head predicting each image's log variance (NetworkOutput.log_variance);
    pooling="gem" pools the last feature map by a generalized mean with a learned exponent instead of
    the average (models/layers.py GeneralizedMeanPool; one more parameter, `gem_p`).
    Attributes: .embedding_dim, .num_classes, .neck, .neck_feat.
    Raises UserError for an unknown name or option, or a negative size.
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if num_classes < 0 or embedding_size < 0:
        raise UserError(f"num_classes and embedding_size must be 0 or more, "
                        f"got {num_classes} and {embedding_size}")
    for option, value, allowed in (("neck", neck, NECKS), ("neck_feat", neck_feat, NECK_FEATS),
                                   ("last_stride", last_stride, LAST_STRIDES), ("stem", stem, STEMS),
                                   ("pooling", pooling, POOLINGS)):
        if value not in allowed:
            raise UserError(f"unknown {option} {value!r}; choose one of: {', '.join(map(str, allowed))}")
    # Eager Paddle refuses a parameter name already used in this process unless
    # the layers are created under a fresh unique_name namespace; this also lets
    # eager mode catch a duplicate name within one network.
    with unique_name.guard():
        trunk = MODELS[name](last_stride=last_stride, stem=stem)
        trunk.pool = POOLINGS[pooling]()  # every trunk pools its last map through its `.pool` layer
        return EmbeddingNet(trunk, num_classes=num_classes, embedding_size=embedding_size, neck=neck,
                            neck_feat=neck_feat, uncertainty=uncertainty)
