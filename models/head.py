"""The metric-learning network: backbone, optional embedding projection, optional classifier."""
from paddle import nn

from models.layers import named_linear

EMBEDDING_FC = "embedding_fc"
CLASSIFIER_FC = "classifier_fc"


class EmbeddingNet(nn.Layer):
    """images [N, 3, H, W] -> (embedding [N, embedding_dim], logits [N, num_classes] or None).

    The embedding is the backbone's pooled feature, projected by the fully
    connected layer `embedding_fc` (no activation) when embedding_size > 0.
    The logits, for softmax-based losses, come from the fully connected layer
    `classifier_fc` applied to the embedding; num_classes == 0 leaves it out.
    """

    def __init__(self, backbone, num_classes=0, embedding_size=0):
        super().__init__()
        self.backbone = backbone
        self.embedding_dim = embedding_size or backbone.feature_dim
        self.num_classes = num_classes
        self.embedding_fc = None
        if embedding_size > 0:
            self.embedding_fc = named_linear(backbone.feature_dim, embedding_size, EMBEDDING_FC)
        self.classifier_fc = None
        if num_classes > 0:
            self.classifier_fc = named_linear(self.embedding_dim, num_classes, CLASSIFIER_FC)

    def forward(self, images):
        embedding = self.backbone(images)
        if self.embedding_fc is not None:
            embedding = self.embedding_fc(embedding)
        logits = None if self.classifier_fc is None else self.classifier_fc(embedding)
        return embedding, logits
