"""The one argument utility that train.py, eval.py and infer.py share.

Every flag is declared here once, in the group of the scripts that read it.
`parse_args(script)` parses, checks the values and records which flags the user
typed (`args.explicit`); cli/config.py turns that into the run's settled configuration.
"""
import argparse
import math
import sys

from engine.network_spec import CHOICES as NETWORK_CHOICES
from engine.optimizers import DEFAULT as DEFAULT_OPTIMIZER
from engine.optimizers import OPTIMIZERS
from reader.decode import MAX_PIXELS
from utility.errors import UserError

DEFAULT_DATA_DIR = "data/CUB_200_2011"
DEFAULT_TRAIN_LIST = "data/CUB200_train.txt"
DEFAULT_VAL_LIST = "data/CUB200_val.txt"
DEFAULT_ITERATIONS = 30000


def str2bool(text):
    """Booleans accept True/False (and the usual spellings), as the original did."""
    value = str(text).strip().lower()
    if value in ("true", "t", "yes", "y", "1"):
        return True
    if value in ("false", "f", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


# A boolean flag takes True/False as the original's did, or stands alone for True (`--skip_bad_images`).
BOOLEAN = {"type": str2bool, "nargs": "?", "const": True, "metavar": "BOOL"}


def int_list(text):
    try:
        return [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def float_pair(text):
    """MIN,MAX: two numbers, MIN <= MAX."""
    try:
        values = [float(part) for part in str(text).split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (two numbers), got {text!r}")
    if len(values) != 2 or values[0] > values[1]:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX with MIN <= MAX, got {text!r}")
    return tuple(values)


def k_alpha(text):
    """K,ALPHA: a neighbour count and a weighting exponent (query expansion, database augmentation)."""
    parts = str(text).split(",")
    try:
        k, alpha = int(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"expected K,ALPHA (an integer and a number), got {text!r}")
    if len(parts) != 2 or k < 1 or not 0 <= alpha < float("inf"):
        raise argparse.ArgumentTypeError(f"expected K,ALPHA with K >= 1 and ALPHA >= 0, got {text!r}")
    return k, alpha


def image_shape(text):
    shape = int_list(text)
    if len(shape) != 3 or shape[0] != 3 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"expected 3,H,W (images are read as RGB), got {text!r}")
    return tuple(shape)


def _common(p):
    g = p.add_argument_group("model and data (all scripts)")
    g.add_argument("--model", default="ResNet50",
                   help="network builder: ResNet18, ResNet34, ResNet50, SE_ResNeXt50_32x4d, ResNet50_IBN_a (the "
                        "re-identification baselines' backbone), SE_ResNet50, MobileNetV3_large (fast CPU serving)")
    g.add_argument("--embedding_size", type=int, default=0, help="project the pooled feature to N dims; 0 keeps the pooled feature")
    g.add_argument("--neck", choices=NETWORK_CHOICES["neck"], default="none", help="bnneck: batch norm (no learned shift) between the feature and a bias-free classifier; the metric loss sees the feature before it")
    g.add_argument("--neck_feat", choices=NETWORK_CHOICES["neck_feat"], default="after", help="with --neck=bnneck: evaluate and export the feature after the batch norm or before it")
    g.add_argument("--last_stride", type=int, choices=NETWORK_CHOICES["last_stride"], default=2, help="stride of the last stage: 1 doubles the final feature map (same parameters)")
    g.add_argument("--stem", choices=NETWORK_CHOICES["stem"], default="imagenet", help="first convolution: imagenet = 7x7 stride 2 (the original); small = 3x3 stride 1, for inputs of 32-64 px (4x the compute, finer maps); MobileNetV3_large keeps its 3x3 stem and strides it by 1")
    g.add_argument("--pooling", choices=NETWORK_CHOICES["pooling"], default="avg", help="the last feature map's global pooling: avg (the original), or gem, a generalized mean whose learned exponent leans towards the maximum, as image retrieval and re-identification systems pool")
    g.add_argument("--uncertainty", **BOOLEAN, default=False,
                   help="a head on the pooled feature predicts each image's log variance s (trained by "
                        "--loss_name uncertaintytriplet or uncertaintysoftmax); exports give sigma^2 as a second "
                        "output, infer.py writes it to uncertainty.npy, eval.py scores its uncertain queries")
    g.add_argument("--image_shape", type=image_shape, default=(3, 224, 224), help="C,H,W of the network input")
    g.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="root that list paths are relative to")
    g.add_argument("--train_list", default=DEFAULT_TRAIN_LIST, help="training list: 'relative/path.jpg LABEL' per line")
    g.add_argument("--val_list", default=DEFAULT_VAL_LIST, help="evaluation list, same format")
    g.add_argument("--with_camera", **BOOLEAN, default=False,
                   help="lists have a camera column: 'relative/path.jpg LABEL CAMERA' (re-identification)")
    g.add_argument("--num_workers", type=int, default=2, help="image decoding worker processes (0 decodes in the main process)")
    g.add_argument("--max_image_pixels", type=int, default=MAX_PIXELS,
                   help="images with more pixels are refused (a JPEG is first decoded at 1/2..1/8 size to fit); 0 = no limit")
    g.add_argument("--test_batch_size", type=int, default=50, help="batch size for embedding evaluation images")
    g.add_argument("--eval_resize", choices=NETWORK_CHOICES["eval_resize"], default="crop",
                   help="evaluation preprocessing: 'crop' resizes the short side to 256/224 of the input size and "
                        "takes the centre crop (ImageNet protocol); 'full' resizes the whole image to the input "
                        "size, nothing cut off (drawings, characters)")
    g.add_argument("--ink_crop", **BOOLEAN, default=False,
                   help="line drawings (dark strokes on light paper): before training's crops and evaluation's "
                        "resize, cut each image to the square around its strokes, so that every drawing fills "
                        "the input whatever its size and place on the page")
    g.add_argument("--pretrained_model", default=None,
                   help="parameters to load: a checkpoint or a folder of weights, or an ImageNet ResNet file of "
                        "torchvision (.pth), timm (.safetensors) or PaddleClas (.pdparams)")
    g.add_argument("--use_gpu", **BOOLEAN, default=None, help="run on GPU 0; default: whether Paddle was built with CUDA")
    g.add_argument("--seed", type=int, default=0, help="random seed for parameters, sampling and augmentation")

    _loss(p)


def _loss(p):
    """The loss flags: --loss_name, the P x K batch's K, and one flag per loss setting, generated from the
    settings dataclasses declared next to each loss (losses/registry.py; the defaults live there only)."""
    import losses  # imports Paddle: only when a parser is built, after cli/runtime.configure()

    g = p.add_argument_group("loss (train.py; eval.py for test_loss)")
    g.add_argument("--loss_name", default="tripletloss", help=f"a loss of losses.LOSSES: {', '.join(losses.LOSSES)}")
    # K belongs to the batch layout of every "pk" loss (LossSpec.samples_each_class), not to one loss.
    g.add_argument("--samples_each_class", type=int, default=2, help="K: images of each class in a P x K batch")
    g.add_argument("--triplet_mining", choices=["none", "hard"], default="none", help="kept for old command lines: 'hard' with tripletloss means --loss_name=batchhardtripletloss")
    for flag in losses.FLAGS:
        g.add_argument(f"--{flag.name}", **(BOOLEAN if flag.kind is bool else {"type": flag.kind}), default=flag.default,
                       help=flag.help)


def _train(p):
    g = p.add_argument_group("training (train.py)")
    g.add_argument("--config", default=None,
                   help="a recipe: YAML file of flag values (recipes/); flags on the command line override it")
    g.add_argument("--train_batch_size", type=int, default=96,
                   help="images per iteration, over all devices (96 fits triplets and P x K batches with "
                        "K = 2, 3, 4, 6 or 8 on 1, 2 or 4 devices)")
    g.add_argument("--cpu_processes", type=int, default=None, metavar="N",
                   help="train on N data-parallel CPU processes (train.py relaunches itself through "
                        "paddle.distributed.launch); default: one per core, at most 8, as many as split the batch")
    g.add_argument("--num_epochs", type=int, default=None, help="train this many passes over the list (instead of --total_iter_num)")
    g.add_argument("--total_iter_num", type=int, default=None, help=f"train this many iterations (default {DEFAULT_ITERATIONS} unless --num_epochs)")
    g.add_argument("--lr", type=float, default=0.01, help="base learning rate")
    g.add_argument("--lr_strategy", choices=["piecewise_decay", "cosine"], default="piecewise_decay")
    g.add_argument("--lr_steps", type=int_list, default=[15000, 25000], help="piecewise_decay: iterations where lr is multiplied by 0.1")
    g.add_argument("--warmup_iter", type=int, default=0, help="linear warm-up from 0 over this many iterations")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULT_OPTIMIZER,
                   help="momentum: SGD with --momentum (the original's); adam: Adam, --weight_decay added to the "
                        "gradient (reid-strong-baseline's); adamw: Adam with decoupled --weight_decay")
    g.add_argument("--momentum", type=float, default=0.9, help="--optimizer momentum: its momentum")
    g.add_argument("--weight_decay", type=float, default=1e-4,
                   help="L2 decay on all parameters (adamw: the decoupled decay's coefficient)")
    g.add_argument("--alpha", type=float, default=0.0, help="weight of the softmax branch: loss = metric + alpha * softmax")
    g.add_argument("--label_smoothing", type=float, default=0.0, help="label smoothing of the softmax branch")
    g.add_argument("--color_jitter", **BOOLEAN, default=False, help="augment: random brightness, contrast, saturation")
    g.add_argument("--rotate", **BOOLEAN, default=False, help="augment: small random rotation (+-10 degrees, or +-D with --rotation_degrees D)")
    g.add_argument("--rotation_degrees", type=float, default=0.0, help="augment: random rotation by up to +-D degrees (0 = off, or +-10 with --rotate True)")
    g.add_argument("--crop_area", type=float_pair, default=(0.08, 1.0), help="augment: MIN,MAX fraction of the image area the random-resized crop covers (1,1 = whole image)")
    g.add_argument("--crop_aspect", type=float_pair, default=(3 / 4, 4 / 3), help="augment: MIN,MAX aspect ratio of the random-resized crop (1,1 = never stretch)")
    g.add_argument("--hflip", **BOOLEAN, default=True, help="augment: random horizontal flip (turn off for characters and text)")
    g.add_argument("--random_erasing", **BOOLEAN, default=False, help="augment: erase a random rectangle")
    g.add_argument("--dac_clusters", type=int, default=0, help="divide and conquer: K learners on K clusters of the data (0 = off)")
    g.add_argument("--dac_period", type=int, default=2, help="divide and conquer: re-cluster every N passes")
    g.add_argument("--dac_full_from", type=int, default=None, help="divide and conquer: from this pass on, train the whole embedding on all data")
    g.add_argument("--xbm_size", type=int, default=0, help="cross-batch memory: the pair loss also compares each anchor with this device's last N embeddings (0 = off)")
    g.add_argument("--xbm_start_iter", type=int, default=0, help="cross-batch memory: fill and use it from this iteration on")
    g.add_argument("--gather_embeddings", **BOOLEAN, default=False, help="several devices: the pair loss also compares each anchor with the other devices' batch rows")
    g.add_argument("--checkpoint", default=None, help="resume from this checkpoint directory (or its 'latest' pointer)")
    g.add_argument("--model_save_dir", default="output", help="checkpoints go to MODEL_SAVE_DIR/MODEL/N")
    g.add_argument("--nan_policy", choices=["stop", "skip_batch"], default="stop", help="a non-finite loss stops training (stop), or its step is undone and counted (skip_batch: keeps a copy of the parameters each step)")
    g.add_argument("--overwrite", **BOOLEAN, default=False, help="start a new run in a --model_save_dir that holds another run's checkpoints")
    g.add_argument("--save_iter_step", type=int, default=1000, help="save every N iterations (with --total_iter_num)")
    g.add_argument("--keep_checkpoints", type=int, default=5, help="keep the last N checkpoints, and always the ones 'latest' and 'best' (best validation Recall@1) name; older ones are deleted (0 = keep all)")
    g.add_argument("--test_iter_step", type=int, default=1000, help="evaluate Recall@1 every N iterations (with --total_iter_num)")
    g.add_argument("--display_iter_step", type=int, default=10, help="print a progress line every N iterations")


def _eval(p):
    g = p.add_argument_group("evaluation (eval.py)")
    g.add_argument("--recall_k", type=int_list, default=[1, 2, 4, 8], help="K values of Recall@K")
    g.add_argument("--feat_norm", **BOOLEAN, default=True, help="L2-normalise embeddings before searching")
    g.add_argument("--nmi", **BOOLEAN, default=True, help="also compute NMI (k-means; minutes at 60k images)")
    g.add_argument("--query_list", default=None, help="separate query list (with --gallery_list)")
    g.add_argument("--gallery_list", default=None, help="separate gallery list (with --query_list)")
    g.add_argument("--re_ranking", **BOOLEAN, default=False,
                   help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) before mAP/CMC (re-identification) "
                        "or before Recall@K and MAP@R")
    g.add_argument("--database_augmentation", type=k_alpha, default=None,
                   help="K,ALPHA: before Recall@K and MAP@R, every gallery embedding replaced by the normalised sum "
                        "of itself and its K nearest gallery embeddings, weighted by cosine similarity**ALPHA (DBA)")
    g.add_argument("--query_expansion", type=k_alpha, default=None,
                   help="K,ALPHA: the same for every query with its K nearest gallery embeddings, after "
                        "--database_augmentation (alpha-QE; ALPHA 0 = average query expansion)")
    g.add_argument("--uncertainty_weight", type=float, default=0.0,
                   help="K: with a model that predicts uncertainty (--uncertainty True), rank by squared distance "
                        "+ K (sigma2_query + sigma2_gallery); 0 = the plain distance (not with post-processing)")
    g.add_argument("--episodes", type=int, default=0,
                   help="also N few-shot episodes on the evaluation list: error rate of --ways-way --shots-shot "
                        "classification by the nearest support image or class mean, with its 95%% interval (0 = none)")
    g.add_argument("--ways", type=int, default=20, help="few-shot: classes per episode")
    g.add_argument("--shots", type=int, default=1, help="few-shot: support images per class")
    g.add_argument("--queries_per_class", type=int, default=0,
                   help="few-shot: queries per class and episode (0 = every image not in the support; 1 = Lake's "
                        "one-shot protocol)")
    g.add_argument("--within_alphabet", **BOOLEAN, default=False,
                   help="few-shot: the classes of an episode come from one alphabet, the folder --group_level "
                        "levels above the images (alphabets with fewer than --ways classes are left out)")
    g.add_argument("--group_level", type=int, default=2,
                   help="few-shot: an image's alphabet is the folder this many levels above it in the list path "
                        "(1 = the folder holding it; 2 = Omniglot's set/ALPHABET/character/drawing.png)")
    g.add_argument("--paired_drawers", **BOOLEAN, default=False,
                   help="few-shot: every support image of an episode by one drawer and every query by another, as "
                        "in Lake's Omniglot runs (with --queries_per_class); the drawer is the number after the last "
                        "underscore of the file name (Omniglot's 0596_01.png)")
    g.add_argument("--threshold", **BOOLEAN, default=False,
                   help="also find the distance threshold that best separates same-class from different-class pairs")
    g.add_argument("--threshold_plot", default=None,
                   help="draw the same/different-class distance histograms and the threshold to this PNG")
    g.add_argument("--metrics_out", default=None, help="append the metrics as one JSON line to this file")
    g.add_argument("--visualize", type=int, default=0, help="draw N queries with their top-k results to --visualize_file")
    g.add_argument("--visualize_file", default="retrieval.png")


def _infer(p):
    g = p.add_argument_group("inference (infer.py)")
    g.add_argument("--infer_list", default=None, help="list to embed (labels optional); default --val_list")
    g.add_argument("--output_dir", default="infer_output", help="where features.npy, labels.npy, paths.txt go")
    g.add_argument("--print_features", **BOOLEAN, default=False, help="print the original's Test-{i}-feature lines")
    g.add_argument("--export_model", default=None, help="also save a Paddle inference model (image -> embedding) here")
    g.add_argument("--export_onnx", default=None,
                   help="also write the model as ONNX to this file (paddle2onnx), its preprocessing beside it "
                        "(FILE minus .onnx + .preprocess.json)")
    g.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="with --export_onnx: also write an int8 model (FILE minus .onnx + .int8.onnx; onnxruntime "
                        "static quantization, calibrated on --calibration_images of --calibration_list)")
    g.add_argument("--calibration_list", default=None, help="images to calibrate int8 ranges on; default --train_list")
    g.add_argument("--calibration_images", type=int, default=300,
                   help="how many images of --calibration_list, spread evenly over it")


def engine_flag(parser):
    """--engine, the one declaration for eval.py, infer.py and the retrieval tools (cli/retrieval_args.py, serve.py)."""
    from engine.embedder import ENGINES

    parser.add_argument("--engine", choices=ENGINES, default=None,
                        help="what runs the network when embedding: Paddle Inference with oneDNN, or onnxruntime on "
                             "the model's ONNX conversion (same features); default onnxruntime on the CPU, where it "
                             "measured faster, and paddle on a GPU (docs/speed.md)")


def _engine(p):
    g = p.add_argument_group("embedding engine (eval.py, infer.py)")
    engine_flag(g)
    g.add_argument("--inference_model", default=None,
                   help="embed with this exported model instead of --pretrained_model: a folder of infer.py "
                        "--export_model, or an ONNX file of --export_onnx (run by onnxruntime)")


def _skip_bad(p):
    p.add_argument("--skip_bad_images", **BOOLEAN, default=False,
                   help="leave out unreadable images (reported) instead of stopping")


SCRIPT_GROUPS = {
    "train": (_common, _train),
    "eval": (_common, _eval, _skip_bad, _engine),
    "infer": (_common, _infer, _skip_bad, _engine),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def build_parser(script):
    parser = _Parser(prog=f"{script}.py", allow_abbrev=False,
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for add_group in SCRIPT_GROUPS[script]:
        add_group(parser)
    return parser


def defaults(script="train", **overrides):
    """Every flag of `script` at its default value, with `overrides`: options for code and tests."""
    args = build_parser(script).parse_args([])
    vars(args).update(overrides)
    return args


def _recipe_argv(parser, argv):
    """The flags of the --config recipe named in argv (cli/recipes.py), or []."""
    from cli.recipes import recipe_argv

    if not any(token == "--config" or token.startswith("--config=") for token in argv):
        return []
    recipe = parser.parse_known_args(argv)[0].config
    known = {action.dest for action in parser._actions} - {"help", "config"}
    return recipe_argv(recipe, known) if recipe else []


def explicit_flags(argv):
    """Names of the flags present on the command line."""
    return {tok[2:].split("=", 1)[0] for tok in argv if tok.startswith("--")}


def parse_args(script, argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(script)
    argv = _recipe_argv(parser, argv) + argv  # the command line after the recipe: it wins
    args = parser.parse_args(argv)
    args.explicit = explicit_flags(argv)
    _check(script, args)
    return args


def _check(script, args):
    positive = ["test_batch_size"] + (["train_batch_size", "samples_each_class"] if script == "train" else [])
    for name in positive:
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.seed < 0:
        raise UserError(f"--seed must be 0 or more, got {args.seed}")
    for name in ("num_workers", "embedding_size", "max_image_pixels"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} must be 0 or more, got {getattr(args, name)}")
    _check_loss_settings(args)
    if script == "train":
        if args.num_epochs is not None and args.total_iter_num is not None:
            raise UserError("give --num_epochs or --total_iter_num, not both")
        for name in ("num_epochs", "total_iter_num", "save_iter_step", "test_iter_step", "display_iter_step"):
            value = getattr(args, name)
            if value is not None and value <= 0:
                raise UserError(f"--{name} must be positive, got {value}")
        if args.keep_checkpoints < 0:
            raise UserError(f"--keep_checkpoints must be 0 (keep all) or more, got {args.keep_checkpoints}")
        _check_training_numbers(args)
        from reader.loaders import augment_from_args, check_augment

        check_augment(augment_from_args(args))  # the reader's own rules for the augmentation flags
    if script == "infer":
        _check_onnx_export(args)
    if script == "eval":
        if (args.query_list is None) != (args.gallery_list is None):
            raise UserError("--query_list and --gallery_list go together")
        if not args.recall_k or min(args.recall_k) <= 0:
            raise UserError(f"--recall_k must be positive integers, got {args.recall_k}")
        _check_post_processing(args)
        _check_few_shot(args)
        if args.threshold_plot and not args.threshold and "threshold" in args.explicit:
            raise UserError("--threshold_plot draws the threshold: it needs --threshold True")


def check_re_ranking_alone(args):
    """UserError when --re_ranking and --query_expansion are both given (eval.py, search.py)."""
    if args.re_ranking and args.query_expansion:
        from evaluation.postprocess import expansions_clash
        raise UserError(expansions_clash("--re_ranking", "--query_expansion"))


def _check_post_processing(args):
    expansions = [name for name in ("database_augmentation", "query_expansion") if getattr(args, name)]
    if expansions and args.query_list is not None and args.with_camera:
        raise UserError(f"--{expansions[0]} works on Recall@K and MAP@R, not on the re-identification metrics")
    if expansions and not args.feat_norm:
        raise UserError(f"--{expansions[0]} weighs neighbours by cosine similarity: it needs --feat_norm True")
    check_re_ranking_alone(args)
    if not (math.isfinite(args.uncertainty_weight) and args.uncertainty_weight >= 0):
        raise UserError(f"--uncertainty_weight must be a finite number, 0 or more, got {args.uncertainty_weight}")
    post_processing = [name for name in ("re_ranking", "database_augmentation", "query_expansion")
                       if getattr(args, name)]
    if args.uncertainty_weight and post_processing:
        raise UserError(f"--uncertainty_weight ranks by plain distances plus the uncertainty: not with "
                        f"--{post_processing[0]}")


def _check_few_shot(args):
    """The few-shot flags, checked by evaluation.fewshot.FewShotTask (the same checks as for Python callers)."""
    typed = {"ways", "shots", "queries_per_class", "within_alphabet", "group_level", "paired_drawers"} & args.explicit
    if not args.episodes:
        if typed:
            raise UserError(f"--{sorted(typed)[0]} sets the few-shot episodes: give --episodes N too")
        return
    if args.query_list is not None:
        raise UserError("--episodes draws its classes from the evaluation list (--val_list), not from "
                        "--query_list/--gallery_list")
    if args.group_level < 1:
        raise UserError(f"--group_level counts folders above the image: 1 or more, got {args.group_level}")
    if args.queries_per_class < 0:
        raise UserError(f"--queries_per_class must be 0 (every image not in the support) or more, "
                        f"got {args.queries_per_class}")
    from engine.evaluate import few_shot_task

    try:
        few_shot_task(args)
    except ValueError as err:
        raise UserError(f"--episodes, --ways, --shots: {err}") from None


def _check_onnx_export(args):
    if args.export_onnx is not None and not args.export_onnx.endswith(".onnx"):
        raise UserError(f"--export_onnx names the ONNX file to write, ending in .onnx, got {args.export_onnx}")
    if args.quantize != "none" and args.export_onnx is None:
        raise UserError("--quantize int8 quantizes the ONNX export: give --export_onnx FILE.onnx too")
    if args.calibration_images <= 0:
        raise UserError(f"--calibration_images must be positive, got {args.calibration_images}")


def _check_loss_settings(args):
    """Every loss's settings, checked by its dataclass (the same checks as for Python callers)."""
    import losses

    for spec in losses.LOSSES.values():
        spec.params_from(args)


def _check_training_numbers(args):
    """Values that would train nothing, or train into NaN, are refused before any work (the training
    extensions' flags are checked by their own modules: engine/dac.py, engine/xbm.py, engine/extensions.py)."""
    import math

    for name in ("lr", "weight_decay", "alpha"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0:
            raise UserError(f"--{name} must be a finite number, 0 or more, got {value}")
    if not 0 <= args.momentum < 1:
        raise UserError(f"--momentum must be in [0, 1), got {args.momentum}")
    if not 0 <= args.label_smoothing < 1:
        raise UserError(f"--label_smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.center_loss_weight and args.optimizer != "momentum":  # losses/centerloss.py: the centres' rate
        raise UserError(f"--center_loss_weight steps the class centres at 1/weight times the learning rate, which "
                        f"gives SGD the unweighted gradient; --optimizer {args.optimizer} would move them by about "
                        f"{args.lr / args.center_loss_weight:g} a step whatever the gradient: use --optimizer momentum")
    if args.warmup_iter < 0:
        raise UserError(f"--warmup_iter must be 0 or more, got {args.warmup_iter}")
    if any(step < 0 for step in args.lr_steps):
        raise UserError(f"--lr_steps must be 0 or more, got {args.lr_steps}")


def as_flag(value):
    """A flag value as it is typed: (3, 32, 32) -> 3,32,32."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


CONFIGURATION_HEADER = "-----------  Configuration Arguments -----------"


def print_arguments(args):
    """Print the configuration at start, as the original example did."""
    print(CONFIGURATION_HEADER)
    for name, value in sorted(vars(args).items()):
        print(f"{name}: {value}")
    print("------------------------------------------------", flush=True)
