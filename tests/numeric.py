"""Central finite differences, the reference the loss gradients are tested against."""
import numpy as np


def numeric_gradient(numpy_loss, x, step=1e-6):
    """d numpy_loss / dx at x (float64), one coordinate at a time."""
    numeric = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (numpy_loss(up) - numpy_loss(down)) / (2 * step)
    return numeric
