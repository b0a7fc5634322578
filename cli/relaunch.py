"""train.py on several CPU processes: it relaunches itself through Paddle's launcher.

Paddle 3.3.1's training step uses one core (cli/runtime.py), but a second data-parallel process uses a second
one: on 2 cores the best Omniglot recipe trained 1.53x faster on 2 processes than on one, to the same Recall@1
(docs/speed.md). So on a CPU train.py runs, unless --cpu_processes 1,

    python -m paddle.distributed.launch --nproc_per_node N --log_dir MODEL_SAVE_DIR/launch_logs train.py ARGS

with N one per usable core (at most MAX_PROCESSES) that the batch splits into. This process stays the
user's console: it shows process 0's output (the process that reports and saves) as it comes, and a Ctrl-C
stops process 0 after its step, as in a one-process run, so that it saves a checkpoint to resume from (the
launcher then stops the others, which wait for it in the next step's gradient exchange).
"""
import contextlib
import os
import signal
import subprocess
import sys
import time

from cli.args import CONFIGURATION_HEADER
from reader.loaders import check_device_batch
from utility.errors import UserError

# The automatic count stops here (--cpu_processes goes beyond): measured on 2 cores only, and each process
# adds its share of every step's gradient all-reduce over gloo (TCP), a full copy of the model in memory and
# its own image-decoding workers, while its batch shrinks (96 images over 8 processes: 12 each).
MAX_PROCESSES = 8
LAUNCH_LOGS = "launch_logs"  # the launcher's folder in --model_save_dir: workerlog.N of each process
_TO_STDERR = ("error: ", "interrupted")  # process 0's lines that a one-process run prints on stderr
# Paddle's init_parallel_env lists every flag away from its default (FLAGS_enable_pir_in_executor, set by Paddle
# itself) between two rules of "=": left to process 0's log, as a one-process run never prints it.
_PADDLE_FLAGS_BLOCK = "======================= Modified FLAGS detected"
_POLL_S = 0.2


def process_count(requested, *, cores, batch_size, layout, samples_each_class, use_gpu, launched):
    """How many processes train this run; 1: this process trains itself.

    requested: --cpu_processes (None: one per core, as many as `batch_size` splits into, at most MAX_PROCESSES);
    layout, samples_each_class: the loss's batch layout and its K (reader.loaders.check_device_batch);
    launched: this process is already one of paddle.distributed.launch's.
    UserError for a count below 1, more than one on a GPU, or a requested count the batch cannot split into.
    """
    if requested is not None and requested < 1:
        raise UserError(f"--cpu_processes must be 1 or more, got {requested}")
    if launched:
        return 1
    if use_gpu:
        if requested is not None and requested > 1:
            raise UserError("--cpu_processes is for training on the CPU: to train on several GPUs, run "
                            "python -m paddle.distributed.launch train.py ...")
        return 1
    if requested is not None:
        try:
            check_device_batch(batch_size, layout, samples_each_class, requested)
        except UserError as err:
            raise UserError(f"--cpu_processes {requested}: {err}") from None
        return requested
    return next((count for count in range(min(cores, MAX_PROCESSES), 1, -1)
                 if _splits(batch_size, layout, samples_each_class, count)), 1)


def _splits(batch_size, layout, samples_each_class, count):
    try:
        check_device_batch(batch_size, layout, samples_each_class, count)
    except UserError:
        return False
    return True


def processes_for(config, environ=os.environ):
    """process_count for a resolved train.py configuration, on this machine."""
    import losses
    from engine import device

    spec = losses.get(config.loss_name)
    return process_count(config.cpu_processes, cores=device.usable_cores(), batch_size=config.train_batch_size,
                         layout=spec.layout, samples_each_class=spec.samples_each_class(config.samples_each_class),
                         use_gpu=device.use_gpu(config.use_gpu),
                         launched="PADDLE_TRAINER_ID" in environ)  # set by the launcher, for 1 process too


def train_on_processes(count, config, argv, script):
    """Run `script` (train.py's file) with `argv` (None: this command line's) on `count` processes through
    paddle.distributed.launch; exits with the launcher's status when it is not 0."""
    from engine import training

    with training.lock_save_dir(config, leader=True):
        pass  # a run in progress in the folder: its error now, before its launcher's logs are appended to
    argv = sys.argv[1:] if argv is None else list(argv)
    log_dir = os.path.abspath(os.path.join(config.model_save_dir, LAUNCH_LOGS))
    os.makedirs(log_dir, exist_ok=True)
    print(f"Training on {count} CPU processes through paddle.distributed.launch (--cpu_processes 1 for one); "
          f"every process's output goes to {log_dir}", flush=True)
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(count),
               "--log_dir", log_dir, os.path.abspath(script), *argv]
    status = run_launcher(command, os.path.join(log_dir, "workerlog.0"), os.path.join(log_dir, "launcher.log"))
    if status not in (0, 2, 130):  # 2 and 130: process 0 said why (an error line, or the interrupted save)
        print(f"error: the training processes stopped with exit status {status}; their output is in {log_dir} "
              "(workerlog.N of process N, launcher.log)", file=sys.stderr, flush=True)
    if status:
        sys.exit(status)


def run_launcher(command, leader_log, launcher_log):
    """Run the launcher `command` with its own output going to `launcher_log`; show the lines it writes to
    `leader_log` (process 0's output, appended to the file) as they come and pass signals on; returns its exit
    status."""
    start = os.path.getsize(leader_log) if os.path.exists(leader_log) else 0
    with open(launcher_log, "a") as out:
        # Its own session: a Ctrl-C in the terminal reaches this process only, which passes it on to process 0.
        launcher = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    with _signals_passed_on(launcher):
        _echo_until_exit(launcher, leader_log, start)
    return launcher.returncode if launcher.returncode >= 0 else 128 - launcher.returncode


@contextlib.contextmanager
def _signals_passed_on(launcher):
    """While the launcher runs: Ctrl-C (SIGINT) goes to process 0 alone, as to a one-process run (it stops after
    its step and saves; a second one stops it at once); SIGTERM and SIGHUP stop the launcher and its processes."""
    def interrupt(signum, frame):
        leader = _leader_pid(launcher.pid)
        if leader:
            os.kill(leader, signal.SIGINT)
        else:  # no process started yet: the launcher stops whatever it started
            launcher.send_signal(signal.SIGINT)

    def terminate(signum, frame):
        launcher.terminate()

    handlers = {signal.SIGINT: interrupt, signal.SIGTERM: terminate}
    if hasattr(signal, "SIGHUP"):
        handlers[signal.SIGHUP] = terminate
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _leader_pid(launcher_pid):
    """The pid of the launcher's process 0 (PADDLE_TRAINER_ID=0 in its environment), from Linux's /proc; or None."""
    try:
        children = []
        for task in os.listdir(f"/proc/{launcher_pid}/task"):
            with open(f"/proc/{launcher_pid}/task/{task}/children") as f:
                children += f.read().split()
        for child in children:
            with open(f"/proc/{child}/environ", "rb") as f:
                if b"PADDLE_TRAINER_ID=0" in f.read().split(b"\0"):
                    return int(child)
    except OSError:
        return None
    return None


def _echo_until_exit(launcher, path, start):
    """Print the lines the launcher writes to `path` (process 0's output, from offset `start` on) as they come,
    until the launcher exits."""
    while not os.path.exists(path):
        if launcher.poll() is not None:
            return
        time.sleep(_POLL_S)
    echo = _Echo()
    with open(path, errors="replace") as log:
        log.seek(start)
        pending = ""
        while True:
            finished = launcher.poll() is not None  # before reading: every line written before the exit is shown
            *lines, pending = (pending + log.read()).split("\n")
            for line in lines:
                echo(line)
            if finished:
                break
            time.sleep(_POLL_S)
    if pending:
        echo(pending)


class _Echo:
    """Shows process 0's lines. Until its configuration header, process 0 prints what this process printed
    already (it resolves the same command line): those lines are left to its log, but for errors; so is
    Paddle's block of modified flags."""

    def __init__(self):
        self.started = False
        self.in_flags_block = False

    def __call__(self, line):
        self.started = self.started or line == CONFIGURATION_HEADER
        if line.startswith(_PADDLE_FLAGS_BLOCK):
            self.in_flags_block = True
            return
        if self.in_flags_block:
            self.in_flags_block = set(line) != {"="}  # until its closing rule
            return
        if line.startswith(_TO_STDERR):
            print(line, file=sys.stderr, flush=True)
        elif self.started:  # warnings go where a one-process run prints them
            print(line, file=sys.stderr if line.startswith("warning: ") else sys.stdout, flush=True)
