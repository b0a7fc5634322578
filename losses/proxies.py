"""Learned class representatives (proxies, centres) of the proxy-based losses, as one layer they share."""
import numpy as np
import paddle

from utility.errors import UserError


class LearnedProxies(paddle.nn.Layer):
    """Owns `per_class` learned vectors per class, a parameter [num_classes * per_class, embedding_dim]
    (class c's vectors are rows c * per_class ... c * per_class + per_class - 1).

    It is named `name` in static Programs, so checkpoints save and restore it like the network's
    parameters. `lr_multiplier` scales the optimizer's learning rate for it (Paddle's ParamAttr
    learning_rate, honoured by static programs). It gets no weight decay: the losses use the vectors'
    directions only, and decay would shrink their norms, which only changes their effective step.
    The class ids of a batch index the vectors, so they must be 0..num_classes-1.
    """

    def __init__(self, loss_name, num_classes, embedding_dim, name, per_class=1, lr_multiplier=1.0,
                 initializer=None):
        super().__init__()
        self.loss_name, self.num_classes, self.per_class = loss_name, num_classes, per_class
        # The fixed name matters in static Programs (checkpoints, sharing with a test Program);
        # eager mode forbids reusing a name and keys its state_dict by attribute instead.
        self.proxies = self.create_parameter(
            shape=[num_classes * per_class, embedding_dim],
            attr=paddle.ParamAttr(name=None if paddle.in_dynamic_mode() else name, learning_rate=lr_multiplier,
                                  initializer=initializer or paddle.nn.initializer.KaimingNormal(),
                                  regularizer=paddle.regularizer.L2Decay(0.0)))

    def check_batch(self, labels):
        """UserError for a class id that has no proxy."""
        labels = np.asarray(labels).reshape(-1)
        outside = labels[(labels < 0) | (labels >= self.num_classes)]
        if outside.size:
            raise UserError(f"{self.loss_name}: class id {outside[0]} has no proxy (one per class id "
                            f"0..{self.num_classes - 1}); train on the class ids of the training list")
