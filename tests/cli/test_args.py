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


def test_a_boolean_flag_alone_means_true_in_every_script():
    from cli.retrieval_args import parse_index_args

    assert parse_args("eval", ["--skip_bad_images"]).skip_bad_images is True
    assert parse_args("eval", ["--skip_bad_images", "False", "--re_ranking"]).re_ranking is True
    assert parse_args("train", ["--ink_crop", "--lr=0.1"]).ink_crop is True
    assert parse_args("train", ["--ink_crop=False"]).ink_crop is False
    build = ["build", "--index_dir", "g", "--gallery_dir", "p", "--model_dir", "m"]
    assert parse_index_args("index", build + ["--skip_bad_images"])[0].skip_bad_images is True
    assert parse_index_args("index", build + ["--skip_bad_images", "True"])[0].skip_bad_images is True
    assert parse_index_args("index", build)[0].skip_bad_images is False


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
    (["--optimizer=sgd"], "invalid choice: 'sgd'"),
    (["--center_loss_weight=0.0005", "--optimizer=adam", "--lr=0.00035"], r"would move them by about 0.7 a step"),
])
def test_bad_train_flags_are_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        parse_args("train", argv)


def test_query_and_gallery_go_together():
    with pytest.raises(UserError, match="go together"):
        parse_args("eval", ["--query_list=q.txt"])


@pytest.mark.parametrize("argv, message", [
    (["--query_expansion=5"], "K,ALPHA"),
    (["--database_augmentation=0,3"], "K >= 1 and ALPHA >= 0"),
    (["--query_expansion=2,-1"], "K >= 1 and ALPHA >= 0"),
    (["--query_expansion=2,3", "--feat_norm=False"], "needs --feat_norm True"),
    (["--query_expansion=2,3", "--re_ranking=True"], "not both"),
    (["--database_augmentation=2,3", "--query_list=q", "--gallery_list=g", "--with_camera=True"],
     "not on the re-identification"),
    (["--ways=5"], "give --episodes N too"),
    (["--episodes=-1"], "need episodes >= 1"),
    (["--episodes=10", "--ways=1"], "ways >= 2"),
    (["--episodes=10", "--queries_per_class=-1"], "--queries_per_class must be 0"),
    (["--episodes=10", "--within_alphabet=True", "--group_level=0"], "--group_level counts folders"),
    (["--episodes=10", "--query_list=q", "--gallery_list=g"], "from the evaluation list"),
])
def test_bad_eval_post_processing_and_few_shot_flags(argv, message):
    with pytest.raises(UserError, match=message):
        parse_args("eval", argv)


def test_post_processing_and_few_shot_flags():
    args = parse_args("eval", ["--query_expansion=5,3", "--database_augmentation=10,0", "--episodes=40",
                               "--ways=20", "--queries_per_class=1", "--within_alphabet=True"])
    assert args.query_expansion == (5, 3.0) and args.database_augmentation == (10, 0.0)
    assert (args.episodes, args.ways, args.shots, args.queries_per_class, args.group_level) == (40, 20, 1, 1, 2)
    assert parse_args("eval", ["--re_ranking=True"]).re_ranking  # plain retrieval lists too


def test_script_groups_are_separate():
    with pytest.raises(UserError):
        parse_args("eval", ["--train_batch_size=8"])
    assert parse_args("infer", ["--print_features=True"]).print_features

