"""The one device choice of the toolkit, for the Executor and for Paddle Inference alike."""
import os

from utility.errors import UserError


def use_gpu(requested):
    """Whether to run on a GPU: as asked (--use_gpu), by default when Paddle was built with CUDA."""
    import paddle

    with_cuda = paddle.is_compiled_with_cuda()
    if requested is None:
        return with_cuda
    if requested and not with_cuda:
        raise UserError("--use_gpu=True, but this Paddle was built without CUDA: "
                        "install paddlepaddle-gpu, or pass --use_gpu=False")
    return bool(requested)


def cuda_wheel_installed():
    """Whether Paddle's CUDA wheel (paddlepaddle-gpu) is installed, from the package metadata: what the default
    engine of a search needs to know, without importing Paddle (a second) on a CPU machine."""
    from importlib import metadata

    try:
        metadata.distribution("paddlepaddle-gpu")
    except metadata.PackageNotFoundError:
        return False
    return True


def gpu_id():
    """This process's GPU: paddle.distributed.launch gives each process its own in FLAGS_selected_gpus."""
    return int(os.environ.get("FLAGS_selected_gpus", "0").split(",")[0])


def place(requested):
    """The Executor place for --use_gpu `requested`."""
    import paddle

    return paddle.CUDAPlace(gpu_id()) if use_gpu(requested) else paddle.CPUPlace()


def usable_cores():
    """How many cores this process may run on (its CPU affinity where the OS tells it)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1
