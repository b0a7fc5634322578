"""WorkerPool: order, failures in workers, workers that die, clean shutdown."""
import gc
import multiprocessing as mp
import os
import time

import numpy as np
import pytest

from reader.worker_pool import WorkerPool
from utility.errors import UserError


def _fill_with_item(items, out):
    """Fill each row with its item; the sleep varies with batch size, so workers finish out of order."""
    time.sleep(0.01 * (len(items) % 3))
    for row, value in enumerate(items):
        out[row] = value
    return sum(items)


def test_batches_come_back_in_order_with_their_meta():
    pool = WorkerPool(_fill_with_item, num_workers=2, max_batch=4, row_shape=(2,))
    batches = [[i] * (1 + i % 4) for i in range(9)]
    results = list(pool.run(batches))
    assert [meta for _, meta in results] == [sum(b) for b in batches]
    for (images, _), items in zip(results, batches):
        assert np.array_equal(images, np.repeat(np.array(items, np.float32)[:, None], 2, axis=1))
    pool.close()
    assert not mp.active_children()


def test_user_error_in_a_worker_is_raised_as_is():
    def job(items, out):
        raise UserError(f"bad item {items[0]}")
    pool = WorkerPool(job, num_workers=1, max_batch=1, row_shape=(1,))
    with pytest.raises(UserError, match="bad item 5"):
        list(pool.run([[5]]))
    assert not mp.active_children()


def test_other_worker_errors_carry_the_worker_traceback():
    def job(items, out):
        raise ValueError("boom")
    pool = WorkerPool(job, num_workers=1, max_batch=1, row_shape=(1,))
    with pytest.raises(RuntimeError, match="(?s)reader worker failed.*ValueError: boom"):
        list(pool.run([[1]]))


def test_a_worker_that_dies_is_an_error_not_a_hang():
    def job(items, out):
        os._exit(3)
    pool = WorkerPool(job, num_workers=1, max_batch=1, row_shape=(1,))
    with pytest.raises(RuntimeError, match=r"exited unexpectedly \(exit code 3\)"):
        list(pool.run([[1]]))
    assert not mp.active_children()


def test_abandoned_run_is_drained_and_pool_reusable():
    pool = WorkerPool(_fill_with_item, num_workers=2, max_batch=1, row_shape=(1,))
    run = pool.run([[i] for i in range(10)])
    next(run)
    run.close()
    assert [meta for _, meta in pool.run([[7], [8]])] == [7, 8]
    pool.close()
    pool.close()
    assert not mp.active_children()


def test_a_run_abandoned_after_close_ends_quietly(monkeypatch):
    """A second Ctrl-C stops the pool while a run is still open; the run's clean-up must not then
    wait on the closed queues ("Exception ignored ... Queue is closed" was printed)."""
    import sys

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    pool = WorkerPool(_fill_with_item, num_workers=2, max_batch=4, row_shape=(2,))
    run = pool.run([[1, 2]] * 10)
    next(run)
    pool.close()
    del run
    gc.collect()
    assert [str(hook.exc_value) for hook in unraisable] == []
    assert not mp.active_children()


class _Finalized:
    """Appends the pid of the process that finalizes it to a file."""

    def __init__(self, path):
        self.path = path
        self.cycle = self

    def __del__(self):
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()}\n")


def _collect(items, out):
    gc.collect()
    out[:len(items)] = 0
    return os.getpid()


def test_workers_never_finalize_the_parent_s_garbage(tmp_path):
    """Garbage of the parent (here a cycle with a destructor; in train.py a Paddle executor, whose
    destructor crashed a worker) is left alone by the workers' garbage collector."""
    marker = tmp_path / "finalized_by"
    gc.disable()
    try:
        _Finalized(str(marker))  # unreachable at once, collected only by the gc
        pool = WorkerPool(_collect, num_workers=1, max_batch=1, row_shape=(1,))
        ((_, worker_pid),) = list(pool.run([[1]]))
        pool.close()
    finally:
        gc.enable()
    gc.collect()
    assert worker_pid != os.getpid()
    assert marker.read_text().split() == [str(os.getpid())]
