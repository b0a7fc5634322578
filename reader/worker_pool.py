"""Run batch jobs in worker processes that write into shared memory.

A job is a callable `job(items, out) -> meta`: it fills `out[:len(items)]`
(float32) and returns small picklable metadata. Workers inherit the job and the
shared batch slots when they are forked; only item lists and metadata travel
through queues. Batches come back in
submission order whatever the worker timing, so results never depend on the
worker count.

Workers are forked, so starting them costs nothing and the main script is not
imported again. OpenCV is kept single-threaded in every process (see
reader.decode): a worker forked from a process whose OpenCV thread pool had
run was seen to hang on its first OpenCV call that touched the pool.

Workers ignore SIGINT: Ctrl-C interrupts the main process, which then stops
them. They are daemons, and they also exit on their own when the main process
is gone.
"""
import collections
import gc
import itertools
import multiprocessing as mp
import queue
import signal
import traceback
import weakref

import numpy as np

from utility.errors import UserError

SLOTS_PER_WORKER = 2   # batches each worker may have in flight (prefetch depth)
POLL_SECONDS = 2.0     # how often a waiting main process checks that workers live
JOIN_SECONDS = 2.0


def run_in_process(job, batches, row_shape):
    """The num_workers=0 path: the same jobs, run one after another here."""
    for items in batches:
        out = np.empty((len(items),) + tuple(row_shape), dtype=np.float32)
        yield out, job(items, out)


class WorkerPool:
    """A fixed set of worker processes running one job on batches."""

    def __init__(self, job, num_workers, max_batch, row_shape):
        context = mp.get_context("fork")
        num_slots = num_workers * SLOTS_PER_WORKER
        self._slot_shape = (max_batch,) + tuple(row_shape)
        self._memory = [context.RawArray("f", int(np.prod(self._slot_shape))) for _ in range(num_slots)]
        self._slots = [_as_array(memory, self._slot_shape) for memory in self._memory]
        self._tasks = context.Queue()
        self._results = context.Queue()
        self._workers = [context.Process(target=_worker_loop, daemon=True, name=f"reader-worker-{i}",
                                         args=(job, self._memory, self._slot_shape, self._tasks, self._results))
                         for i in range(num_workers)]
        for worker in self._workers:
            worker.start()
        self._free_slots = list(range(num_slots))
        self._task_numbers = itertools.count()
        self._in_flight = 0
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._tasks, self._results)

    def run(self, batches):
        """Yield (images copy [n, *row_shape], meta) for each item list, in order."""
        self._discard_in_flight()
        batches = iter(batches)
        submitted = collections.deque()  # (task number, batch size) in submission order
        finished = {}                    # task number -> (slot, meta, failure), received out of order
        try:
            self._submit(batches, submitted)
            while submitted:
                task_no, size = submitted.popleft()
                while task_no not in finished:
                    received_no, *outcome = self._receive()
                    finished[received_no] = outcome
                slot, meta, failure = finished.pop(task_no)
                images = self._slots[slot][:size].copy()
                self._free_slots.append(slot)
                if failure is not None:
                    _raise_worker_failure(failure)
                self._submit(batches, submitted)  # keep workers busy while the caller uses this batch
                yield images, meta
        except GeneratorExit:
            self._discard_in_flight()
            raise
        except BaseException:
            self.close()
            raise

    def _submit(self, batches, submitted):
        """Hand out batches while there are free slots."""
        while self._free_slots and (items := next(batches, None)) is not None:
            task_no = next(self._task_numbers)
            self._tasks.put((task_no, self._free_slots.pop(), items))
            submitted.append((task_no, len(items)))
            self._in_flight += 1

    def close(self):
        """Stop the workers (idempotent)."""
        self._finalizer()
        self._in_flight = 0  # gone with the workers: a run abandoned later has nothing to wait for

    def _receive(self):
        while True:
            try:
                task_no, slot, meta, failure = self._results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                dead = [w for w in self._workers if not w.is_alive()]
                if dead:
                    raise RuntimeError(f"reader worker {dead[0].name} exited unexpectedly "
                                       f"(exit code {dead[0].exitcode})") from None
                continue
            self._in_flight -= 1
            return task_no, slot, meta, failure

    def _discard_in_flight(self):
        """Wait for the batches of an abandoned run and free their slots."""
        while self._in_flight:
            _, slot, _, _ = self._receive()
            self._free_slots.append(slot)


def _as_array(memory, shape):
    return np.frombuffer(memory, dtype=np.float32).reshape(shape)


def _worker_loop(job, memory, slot_shape, tasks, results):
    # Objects inherited from the parent are never garbage-collected here: a Paddle executor left for
    # collection in the parent crashed a worker when its destructor ran in the fork (segfault).
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    slots = [_as_array(block, slot_shape) for block in memory]
    while (task := _next_task(tasks)) is not None:
        task_no, slot, items = task
        try:
            results.put((task_no, slot, job(items, slots[slot]), None))
        except Exception as err:  # sent to the main process, which raises it
            failure = (isinstance(err, UserError), str(err), traceback.format_exc())
            results.put((task_no, slot, None, failure))


def _next_task(tasks):
    """The next task, or None when told to stop or when the main process has died."""
    while True:
        try:
            return tasks.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if not mp.parent_process().is_alive():
                return None


def _raise_worker_failure(failure):
    is_user_error, message, worker_traceback = failure
    if is_user_error:
        raise UserError(message)
    raise RuntimeError(f"reader worker failed:\n{worker_traceback}")


def _shutdown(workers, tasks, results):
    _drop_queued(tasks)
    for _ in workers:
        tasks.put(None)
    for worker in workers:
        worker.join(JOIN_SECONDS)
        if worker.is_alive():
            worker.terminate()
            worker.join(JOIN_SECONDS)
    for channel in (tasks, results):
        channel.cancel_join_thread()
        channel.close()


def _drop_queued(tasks):
    """Queued batches are of no use once stopping; dropping them lets workers exit at once."""
    try:
        while True:
            tasks.get_nowait()
    except queue.Empty:
        pass
