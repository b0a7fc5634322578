"""ImageNet weights of torchvision (.pth), timm (.safetensors) and PaddleClas (.pdparams) as --pretrained_model:
their names land on our parameters, the network computes the features of an independent numpy forward pass of
the same weights, and a pickle that names anything but tensor rebuilding is refused without running it."""
import numpy as np
import paddle
import pytest
import safetensors.numpy
from imagenet_files import StorageView, paddleclas_state, pooled_features, random_resnet, torchvision_state, write_pth
from paddle_modes import static_mode

from cli.args import parse_args
from engine import checkpoint, programs
from engine.checkpoint import convert, foreign, imagenet
from utility.errors import UserError


@pytest.fixture(scope="module")
def torchvision_net():
    """Random ResNet-18 weights shaped like torchvision's (no projection in the first block)."""
    return random_resnet(np.random.default_rng(0))


@pytest.fixture(scope="module")
def paddleclas_net():
    """Random ResNet-18 weights shaped like PaddleClas's (every stage's first block projects)."""
    return random_resnet(np.random.default_rng(1), projection_in_first_block=True)


@pytest.fixture(scope="module")
def resnet18():
    """(features of a parameter source, our ResNet18's {name: shape}): a static ResNet18 -> pooled 512-d feature."""
    images = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with static_mode():
        graph = programs.build_embed_graph(parse_args("infer", ["--model=ResNet18", "--embedding_size=0",
                                                                "--image_shape=3,32,32"]))
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(graph.startup)

    def features(source):
        with static_mode():
            checkpoint.load_all_parameters(graph.program, str(source))
            return exe.run(graph.program, feed={graph.image.name: images}, fetch_list=[graph.embedding])[0]

    features.images = images
    return features, checkpoint.program_parameters(graph.program)


def test_torchvision_keys_land_on_our_parameters(torchvision_net, resnet18, tmp_path):
    state = torchvision_state(torchvision_net)
    write_pth(tmp_path / "resnet18-f37072fd.pth", state)
    loaded = foreign.load_checkpoint_state(str(tmp_path), resnet18[1])  # a folder holding the file
    for ours, theirs in (("conv1_weights", "conv1.weight"), ("bn_conv1_offset", "bn1.bias"),
                         ("bn2b_branch2a_mean", "layer1.1.bn1.running_mean"),
                         ("res3a_branch1_weights", "layer2.0.downsample.0.weight"),
                         ("bn3a_branch1_scale", "layer2.0.downsample.1.weight"),
                         ("bn4b_branch2b_variance", "layer3.1.bn2.running_var"),
                         ("res5b_branch2b_weights", "layer4.1.conv2.weight")):
        np.testing.assert_array_equal(loaded[ours], state[theirs])
    # torchvision's first block has no projection; ours is set to the identity
    assert loaded["res2a_branch1_weights"][:, :, 0, 0].tolist() == np.eye(64).tolist()
    assert sorted(loaded) == sorted(resnet18[1])  # fc and num_batches_tracked dropped, every parameter there


def test_paddle_vision_keys_land_where_torchvision_keys_do(torchvision_net, resnet18, tmp_path):
    """paddle.vision's ResNet has torchvision's names with Paddle's batch-norm statistics (_mean, _variance)."""
    state = torchvision_state(torchvision_net)
    paddle_names = {key.replace("running_mean", "_mean").replace("running_var", "_variance"): value
                    for key, value in state.items() if not key.endswith("num_batches_tracked")}
    paddle.save(paddle_names, str(tmp_path / "resnet18.pdparams"))
    loaded = foreign.load_checkpoint_state(str(tmp_path / "resnet18.pdparams"), resnet18[1])
    expected = imagenet.to_our_names(state, "resnet18.pth", resnet18[1])
    assert sorted(loaded) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(loaded[name], expected[name])


def test_paddleclas_keys_land_on_our_parameters(paddleclas_net, resnet18, tmp_path):
    state = paddleclas_state(paddleclas_net)
    paddle.save(state, str(tmp_path / "ResNet18_pretrained.pdparams"))
    loaded = foreign.load_checkpoint_state(str(tmp_path / "ResNet18_pretrained.pdparams"), resnet18[1])
    # blocks are counted over all stages: 0-1 are stage 2's (res2a, res2b), 2-3 stage 3's, ...
    for ours, theirs in (("conv1_weights", "stem.0.conv.weight"), ("bn_conv1_mean", "stem.0.bn._mean"),
                         ("res2a_branch1_weights", "blocks.0.short.conv.weight"),
                         ("res3a_branch1_weights", "blocks.2.short.conv.weight"),
                         ("bn3b_branch2b_variance", "blocks.3.conv1.bn._variance"),
                         ("bn5b_branch2a_offset", "blocks.7.conv0.bn.bias")):
        np.testing.assert_array_equal(loaded[ours], state[theirs])
    assert sorted(loaded) == sorted(resnet18[1])


@pytest.mark.parametrize("source", ["torchvision .pth", "timm folder", "PaddleClas .pdparams", "converted folder"])
def test_the_network_computes_the_features_of_the_weights(source, torchvision_net, paddleclas_net, resnet18,
                                                          tmp_path):
    features, _ = resnet18
    net = paddleclas_net if source.startswith("PaddleClas") else torchvision_net
    if source == "PaddleClas .pdparams":
        path = tmp_path / "ResNet18_pretrained.pdparams"
        paddle.save(paddleclas_state(net), str(path))
    elif source == "timm folder":  # a Hugging Face timm download: model.safetensors (+ config.json)
        path = tmp_path / "timm-resnet18"
        path.mkdir()
        safetensors.numpy.save_file(dict(torchvision_state(net)), str(path / "model.safetensors"))
    else:
        path = write_pth(tmp_path / "resnet18.pth", torchvision_state(net))
        if source == "converted folder":
            convert.convert(str(path), "ResNet18", str(tmp_path / "converted"))
            path = tmp_path / "converted"
    expected = pooled_features(net, features.images)
    got = features(path)
    assert got.shape == (2, 512)
    assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-4


def test_weights_of_another_network_name_the_first_parameter_that_does_not_fit(torchvision_net, resnet18, tmp_path):
    state = torchvision_state(torchvision_net)
    bottleneck_first = {**state, "layer1.0.conv1.weight": np.zeros((64, 64, 1, 1), np.float32)}
    path = str(write_pth(tmp_path / "bottleneck.pth", bottleneck_first))
    with pytest.raises(UserError, match=r"the file's layer1\.0\.conv1\.weight is \(64, 64, 1, 1\), this network's "
                                        r"res2a_branch2a_weights is \(64, 64, 3, 3\); check --model"):
        foreign.load_checkpoint_state(path, resnet18[1])
    shallower = {key: value for key, value in state.items() if not key.startswith("layer4.1.")}
    path = str(write_pth(tmp_path / "shallower.pth", shallower))
    with pytest.raises(UserError, match=r"ResNet of basic blocks 2-2-2-1 weights\) do not fit this network: this "
                                        r"network's res5b_branch2a_weights \(and 9 more\) is not in the file"):
        convert.convert(path, "ResNet18", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_the_small_stem_keeps_its_own_first_convolution(torchvision_net):
    state = torchvision_state(torchvision_net)
    shapes = {name: array.shape for name, array in imagenet.to_our_names(state, "resnet18.pth").items()}
    small_stem = {**shapes, "conv1_weights": (64, 3, 3, 3)}
    loaded = imagenet.to_our_names(state, "resnet18.pth", small_stem)
    assert sorted(loaded) == sorted(set(shapes) - {"conv1_weights"})


def test_variants_that_do_not_convert_are_named(torchvision_net):
    state = torchvision_state(torchvision_net)
    deep_stem = {"conv1.0.weight": np.zeros((32, 3, 3, 3), np.float32), **state}
    with pytest.raises(UserError, match="holds conv1.0.weight, which a plain torchvision/timm ResNet"):
        imagenet.to_our_names(deep_stem, "resnet50d.safetensors")


def test_views_half_and_bfloat16_tensors_read_as_torch_stores_them(tmp_path):
    base = np.arange(24, dtype=np.float32)
    bfloat16 = np.array([1.5, -2.25, 393216], np.float32)  # exact in bfloat16, which is float32 cut to 16 bits
    state = {"transposed": StorageView(base, 0, (6, 4), (1, 6), "FloatStorage"),
             "inner block": StorageView(base, 8, (2, 3), (6, 1), "FloatStorage"),
             "half": np.array([0.5, 65504], np.float16),
             "bfloat16": StorageView((bfloat16.view(np.uint32) >> 16).astype(np.uint16), 0, (3,), (1,),
                                     "BFloat16Storage")}
    loaded = foreign.read_parameter_file(str(write_pth(tmp_path / "odd.pth", state)))
    np.testing.assert_array_equal(loaded["transposed"], base.reshape(4, 6).T)
    np.testing.assert_array_equal(loaded["inner block"], base.reshape(4, 6)[1:3, 2:5])
    assert loaded["half"].dtype == np.float16 and loaded["half"].tolist() == [0.5, 65504]
    assert loaded["bfloat16"].dtype == np.float32 and loaded["bfloat16"].tolist() == bfloat16.tolist()


@pytest.mark.parametrize("module, name, argument", [("os", "system", "touch {marker}"),
                                                    ("builtins", "exec", "open('{marker}', 'w')")])
def test_a_pth_whose_pickle_names_another_global_is_refused_unrun(module, name, argument, tmp_path):
    marker = tmp_path / "ran"
    text = argument.format(marker=marker).encode()
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + len(text).to_bytes(4, "little") + text + b"\x85R."
    path = write_pth(tmp_path / "resnet18.pth", {}, pickle_bytes=payload)
    with pytest.raises(UserError, match=f"refusing to load .*: it asks to run {module}.{name}"):
        foreign.read_parameter_file(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("view, why", [
    (StorageView(np.zeros(10, np.float32), 0, (64, 3, 7, 7), (147, 49, 7, 1), "FloatStorage"), "past the end"),
    (StorageView(np.zeros(1, np.float32), 0, (10 ** 6, 10 ** 6), (0, 0), "FloatStorage"), "more elements")])
def test_a_tensor_beyond_its_storage_is_refused_before_it_is_built(view, why, tmp_path):
    path = write_pth(tmp_path / "resnet18.pth", {"conv1.weight": view})
    with pytest.raises(UserError, match=f"damaged or not a torch .pth file .*{why}"):
        foreign.read_parameter_file(str(path))
