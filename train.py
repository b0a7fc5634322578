"""Train an embedding network with a metric loss (and a softmax branch) as a static graph.

    python train.py --model=ResNet50 --loss_name=tripletloss

See docs/training.md for the flags, checkpoints, resuming and finetuning; the run itself is
engine/training.py.
"""
from cli import relaunch
from cli.args import print_arguments
from cli.config import check_model_and_loss, resolve
from cli.runtime import run_cli


def main(argv=None):
    config = resolve("train", argv)
    check_model_and_loss(config)
    processes = relaunch.processes_for(config)  # on a CPU with several cores, several processes train
    if processes > 1:
        return relaunch.train_on_processes(processes, config, argv, script=__file__)

    from engine import programs, training

    if programs.distributed_env()[1] == 0:  # rank 0 reports
        print_arguments(config)
    return training.train(config)


def run():
    """The console entry point (pyproject.toml)."""
    run_cli(main)


if __name__ == "__main__":
    run()
