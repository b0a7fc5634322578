"""Static mode for a block of a test only: it is global state and must not leak into other tests."""
import contextlib

import paddle


@contextlib.contextmanager
def static_mode():
    paddle.enable_static()
    try:
        yield
    finally:
        paddle.disable_static()
