"""The metric-learning network: backbone, optional embedding projection, optional BNNeck, optional classifier,
optional uncertainty head."""
from typing import NamedTuple, Optional

import paddle
from paddle import ParamAttr, nn

from models.layers import named_linear

EMBEDDING_FC = "embedding_fc"
CLASSIFIER_FC = "classifier_fc"
NECK_BN = "neck_bn"
UNCERTAINTY_FC = "uncertainty_fc"
# The predicted log variance s stays within +-LOG_VARIANCE_LIMIT (sigma^2 within 0.05 .. 20). Unbounded, a hinge
# loss that is 0 for most images (a satisfied triplet) drives their s down without end in 0.5 (exp(-s) L + s),
# and the next image with L > 0 gets weight exp(-s): the Omniglot recipe diverged within 35 steps.
LOG_VARIANCE_LIMIT = 3.0

NECKS = ("none", "bnneck")
NECK_FEATS = ("after", "before")


class NetworkOutput(NamedTuple):
    """What EmbeddingNet gives for a batch of images.

    metric_embedding:    the feature the metric loss sees ([N, embedding_dim]).
    logits:              the classifier's output [N, num_classes], or None without a classifier.
    inference_embedding: the feature used for retrieval (evaluation, inference, export).
    log_variance:        s = log sigma^2 [N] predicted for each image (uncertainty=True), or None.
    Without a neck both embeddings are the same value.
    """
    metric_embedding: object
    logits: Optional[object]
    inference_embedding: object
    log_variance: Optional[object] = None


class BNNeck(nn.Layer):
    """Batch norm with a learned scale and a shift frozen at 0: [N, D] -> [N, D].

    Parameters, named like a PaddleCV batch norm: `{name}_scale` (trainable, starts at 1),
    `{name}_offset` (not trainable, 0), running statistics `{name}_mean` / `{name}_variance`.
    In training the batch's statistics normalise (and update the running ones, momentum 0.9);
    in test programs (set_is_test_attr) and eval mode the running statistics do.

    The batch_norm op itself gets constant weight 1 and bias 0, and the scale and offset are
    applied after it, because in Paddle 3.3 (CPU) the plain ways fail: batch_norm_grad computes
    the weight's gradient only together with the bias's, so a frozen bias leaves the scale's
    gradient empty and the static optimizer stops ("Tensor holds no memory"); and a batch_norm
    without weight and bias crashes the oneDNN kernel of the exported inference model.
    """

    def __init__(self, dim, name, momentum=0.9, epsilon=1e-5):
        super().__init__()
        self.momentum, self.epsilon = momentum, epsilon
        # Only for its running statistics `{name}_mean` / `{name}_variance`.
        self.statistics = nn.BatchNorm1D(dim, momentum=momentum, epsilon=epsilon,
                                         weight_attr=False, bias_attr=False, name=name)
        self.scale = self.create_parameter(
            [dim], attr=ParamAttr(name=f"{name}_scale"), default_initializer=nn.initializer.Constant(1.0))
        self.offset = self.create_parameter(
            [dim], attr=ParamAttr(name=f"{name}_offset", trainable=False),
            default_initializer=nn.initializer.Constant(0.0), is_bias=True)

    def forward(self, x):
        dim = self.scale.shape[0]
        normalised = nn.functional.batch_norm(
            x, self.statistics._mean, self.statistics._variance,
            weight=paddle.ones([dim], x.dtype), bias=paddle.zeros([dim], x.dtype),
            training=self.training, momentum=self.momentum, epsilon=self.epsilon)
        return normalised * self.scale + self.offset


class EmbeddingNet(nn.Layer):
    """images [N, 3, H, W] -> NetworkOutput(metric_embedding, logits, inference_embedding).

    The feature is the backbone's pooled feature, projected by the fully connected
    layer `embedding_fc` (no activation) when embedding_size > 0. The metric loss
    sees this feature.

    neck="none": the classifier `classifier_fc` (weights and bias) is applied to
    the feature, and retrieval uses the feature too.
    neck="bnneck" (Luo et al. 2019, "Bag of Tricks and a Strong Baseline for Deep
    Person Re-identification"): the feature goes through a batch norm `neck_bn`
    with a learned scale and no learned shift (its offset stays 0, not trainable);
    the classifier, now without a bias, is applied to the normalised feature, and
    retrieval uses the normalised feature (neck_feat="after") or the feature before
    the batch norm (neck_feat="before"). The batch norm is built whether or not
    there is a classifier, so the embedding program has it too.
    num_classes == 0 leaves the classifier out.

    uncertainty=True adds `uncertainty_fc`, a fully connected layer from the pooled feature to one number
    per image, s = log sigma^2 (data uncertainty, losses/uncertainty.py), bounded softly by
    s = LOG_VARIANCE_LIMIT * tanh(x / LOG_VARIANCE_LIMIT). Its weights and bias start at 0: every image starts
    at sigma^2 = 1.
    """

    def __init__(self, backbone, num_classes=0, embedding_size=0, neck="none", neck_feat="after",
                 uncertainty=False):
        super().__init__()
        assert neck in NECKS and neck_feat in NECK_FEATS, (neck, neck_feat)
        self.backbone = backbone
        self.embedding_dim = embedding_size or backbone.feature_dim
        self.num_classes = num_classes
        self.neck, self.neck_feat = neck, neck_feat
        self.embedding_fc = None
        if embedding_size > 0:
            self.embedding_fc = named_linear(backbone.feature_dim, embedding_size, EMBEDDING_FC)
        self.neck_bn = BNNeck(self.embedding_dim, NECK_BN) if neck == "bnneck" else None
        self.uncertainty_fc = None
        if uncertainty:
            self.uncertainty_fc = nn.Linear(
                backbone.feature_dim, 1,
                weight_attr=ParamAttr(name=f"{UNCERTAINTY_FC}_weights", initializer=nn.initializer.Constant(0.0)),
                bias_attr=ParamAttr(name=f"{UNCERTAINTY_FC}_offset", initializer=nn.initializer.Constant(0.0)))
        self.classifier_fc = None
        if num_classes > 0:
            self.classifier_fc = named_linear(self.embedding_dim, num_classes, CLASSIFIER_FC,
                                              bias=self.neck_bn is None)

    def forward(self, images):
        feature = pooled = self.backbone(images)
        if self.embedding_fc is not None:
            feature = self.embedding_fc(feature)
        normalised = feature if self.neck_bn is None else self.neck_bn(feature)
        logits = None if self.classifier_fc is None else self.classifier_fc(normalised)
        inference = normalised if self.neck_feat == "after" else feature
        log_variance = None
        if self.uncertainty_fc is not None:
            unbounded = paddle.squeeze(self.uncertainty_fc(nn.functional.normalize(pooled, axis=1)), axis=1)
            log_variance = LOG_VARIANCE_LIMIT * paddle.tanh(unbounded / LOG_VARIANCE_LIMIT)
        return NetworkOutput(feature, logits, inference, log_variance)
