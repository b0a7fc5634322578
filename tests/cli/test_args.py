import pytest

from cli.args import parse_args, str2bool
from utility.errors import UserError


def test_defaults_and_explicit_flags():
    args = parse_args("train", ["--model=ResNet18", "--image_shape", "3,32,32"])
    assert args.model == "ResNet18"
    assert args.image_shape == (3, 32, 32)
    assert args.total_iter_num is None and args.num_epochs is None  # cli/config.py settles the length
    assert args.explicit == {"model", "image_shape"}


@pytest.mark.parametrize("text, value", [("True", True), ("false", False), ("1", True), ("no", False)])
def test_booleans_accept_true_false(text, value):
    assert str2bool(text) is value
    assert parse_args("eval", [f"--feat_norm={text}"]).feat_norm is value


@pytest.mark.parametrize("argv, message", [
    (["--num_epochs=2", "--total_iter_num=5"], "not both"),
    (["--train_batch_size=0"], "--train_batch_size must be positive"),
    (["--image_shape=3,32"], "3,H,W"),
    (["--use_gpu=maybe"], "True or False"),
    (["--seed=-1"], "--seed must be 0 or more"),
    (["--no_such_flag=1"], "unrecognized"),
    (["--lr=-0.5"], "--lr must be a finite number, 0 or more"),
    (["--lr=nan"], "--lr must be a finite number"),
    (["--lr=inf"], "--lr must be a finite number"),
    (["--warmup_iter=-5"], "--warmup_iter must be 0 or more"),
    (["--momentum=1.5"], "--momentum must be in"),
    (["--label_smoothing=1"], "--label_smoothing must be in"),
    (["--alpha=-1"], "--alpha must be"),
])
def test_bad_train_flags_are_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        parse_args("train", argv)


def test_query_and_gallery_go_together():
    with pytest.raises(UserError, match="go together"):
        parse_args("eval", ["--query_list=q.txt"])


def test_script_groups_are_separate():
    with pytest.raises(UserError):
        parse_args("eval", ["--train_batch_size=8"])
    assert parse_args("infer", ["--print_features=True"]).print_features

