"""The cosine classifier that margin softmax losses (arcmargin, cosface) put on the embedding."""
import paddle

from losses.common import l2_normalize


class CosineClassifier(paddle.nn.Layer):
    """Owns a weight [embedding_dim, num_classes], named `weight_name` in static Programs.

    `cosine(embedding)` gives the cosines [B, C] between L2-normalised embeddings and
    L2-normalised weight columns; subclasses turn them into a loss in forward(embedding, labels).
    """

    def __init__(self, embedding_dim, num_classes, weight_name):
        super().__init__()
        # The fixed name matters in static Programs (checkpoints, sharing with a test Program);
        # eager mode forbids reusing a name and keys its state_dict by attribute instead.
        name = None if paddle.in_dynamic_mode() else weight_name
        self.weight = self.create_parameter(
            shape=[embedding_dim, num_classes],
            attr=paddle.ParamAttr(name=name, initializer=paddle.nn.initializer.XavierUniform()))

    def cosine(self, embedding):
        """Cosine similarity [B, C] of each embedding with each class weight."""
        return paddle.matmul(l2_normalize(embedding), l2_normalize(self.weight, axis=0))
