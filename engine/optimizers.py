"""The optimizers train.py offers (--optimizer) and the state each keeps between steps.

- momentum: SGD with momentum (--momentum) and L2 weight decay, the original example's.
- adam: Adam with L2 weight decay added to the gradient, as torch.optim.Adam's weight_decay, which
  reid-strong-baseline and most pytorch-metric-learning examples train with.
- adamw: Adam with decoupled weight decay (Loshchilov & Hutter): each step also shrinks a
  parameter by lr x --weight_decay x its value, outside the moment estimates.
"""
OPTIMIZERS = ("momentum", "adam", "adamw")
DEFAULT = "momentum"  # --optimizer, and what a checkpoint saved before the flag existed was trained with

# Name parts of the persistable state the optimizers add per parameter (Paddle's names: w_velocity_0,
# w_moment1_0, w_beta1_pow_acc_0, ...): a resume without them would restart them.
STATE_MARKERS = ("_velocity_", "_moment1_", "_moment2_", "_beta1_pow_acc_", "_beta2_pow_acc_")


def make_optimizer(config, learning_rate):
    """The Paddle optimizer of config.optimizer, stepping at `learning_rate` (a value or an LR scheduler); built
    inside the train program's guard, after its parameters."""
    import paddle

    if config.optimizer == "momentum":
        return paddle.optimizer.Momentum(learning_rate, momentum=config.momentum,
                                         weight_decay=paddle.regularizer.L2Decay(config.weight_decay))
    if config.optimizer == "adam":
        return paddle.optimizer.Adam(learning_rate, weight_decay=paddle.regularizer.L2Decay(config.weight_decay))
    if config.optimizer == "adamw":
        exempt = _exempt_from_decay(paddle.static.default_main_program())
        return paddle.optimizer.AdamW(learning_rate, weight_decay=config.weight_decay,
                                      apply_decay_param_fun=lambda name: name not in exempt)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; known: {', '.join(OPTIMIZERS)}")


def _exempt_from_decay(program):
    """Names of the parameters whose ParamAttr sets L2Decay(0) (proxies, centres, learned margins): Momentum and
    Adam honour it in place of their own decay; AdamW's decoupled decay must be told."""
    return {param.name for param in program.global_block().all_parameters()
            if param.regularizer is not None and param.regularizer._coeff == 0}  # (L2Decay keeps it private)


def is_parameter_slot(name):
    """Whether a persistable of a train program is state an optimizer keeps for one parameter."""
    return any(marker in name for marker in STATE_MARKERS)


def is_optimizer_state(name):
    """Whether a persistable of a train program is optimizer state (not a parameter)."""
    return is_parameter_slot(name) or name.startswith("learning_rate")
