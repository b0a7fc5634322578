"""The metric-learning network: backbone, optional embedding projection, optional BNNeck, optional classifier."""
from typing import NamedTuple, Optional

from paddle import ParamAttr, nn

from models.layers import named_linear

EMBEDDING_FC = "embedding_fc"
CLASSIFIER_FC = "classifier_fc"
NECK_BN = "neck_bn"

NECKS = ("none", "bnneck")
NECK_FEATS = ("after", "before")


class NetworkOutput(NamedTuple):
    """What EmbeddingNet gives for a batch of images.

    metric_embedding:    the feature the metric loss sees ([N, embedding_dim]).
    logits:              the classifier's output [N, num_classes], or None without a classifier.
    inference_embedding: the feature used for retrieval (evaluation, inference, export).
    Without a neck both embeddings are the same value.
    """
    metric_embedding: object
    logits: Optional[object]
    inference_embedding: object


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
    """

    def __init__(self, backbone, num_classes=0, embedding_size=0, neck="none", neck_feat="after"):
        super().__init__()
        assert neck in NECKS and neck_feat in NECK_FEATS, (neck, neck_feat)
        self.backbone = backbone
        self.embedding_dim = embedding_size or backbone.feature_dim
        self.num_classes = num_classes
        self.neck, self.neck_feat = neck, neck_feat
        self.embedding_fc = None
        if embedding_size > 0:
            self.embedding_fc = named_linear(backbone.feature_dim, embedding_size, EMBEDDING_FC)
        self.neck_bn = None
        if neck == "bnneck":
            self.neck_bn = nn.BatchNorm1D(
                self.embedding_dim, name=NECK_BN,  # running statistics neck_bn_mean / _variance
                weight_attr=ParamAttr(name=f"{NECK_BN}_scale"),
                bias_attr=ParamAttr(name=f"{NECK_BN}_offset", trainable=False,
                                    initializer=nn.initializer.Constant(0.0)))
        self.classifier_fc = None
        if num_classes > 0:
            self.classifier_fc = named_linear(self.embedding_dim, num_classes, CLASSIFIER_FC,
                                              bias=self.neck_bn is None)

    def forward(self, images):
        feature = self.backbone(images)
        if self.embedding_fc is not None:
            feature = self.embedding_fc(feature)
        normalised = feature if self.neck_bn is None else self.neck_bn(feature)
        logits = None if self.classifier_fc is None else self.classifier_fc(normalised)
        inference = normalised if self.neck_feat == "after" else feature
        return NetworkOutput(feature, logits, inference)
