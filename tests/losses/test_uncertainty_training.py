"""--uncertainty True: the head (models/head.py), its place in the train and embedding programs (engine/programs.py),
and the rule that the head and an uncertainty loss go together."""
import numpy as np
import paddle
import pytest
from paddle_modes import static_mode

from cli.args import defaults
from engine import programs
from losses.uncertainty import uncertainty_softmax_loss, uncertainty_triplet
from models import build_model
from utility.errors import UserError

HEAD = ("uncertainty_fc_weights", "uncertainty_fc_offset")


def images(batch, seed=0):
    return np.random.default_rng(seed).random((batch, 3, 32, 32), dtype=np.float32)


def test_the_head_predicts_one_log_variance_per_image_starting_at_zero():
    model = build_model("ResNet18", 0, 16, uncertainty=True)
    shapes = {p.name: p.shape for p in model.parameters() if p.name in HEAD}
    assert shapes == {"uncertainty_fc_weights": [512, 1], "uncertainty_fc_offset": [1]}
    model.eval()
    output = model(paddle.to_tensor(images(3)))
    assert output.log_variance.shape == [3] and output.metric_embedding.shape == [3, 16]
    np.testing.assert_array_equal(output.log_variance.numpy(), np.zeros(3, "float32"))  # sigma^2 = 1 at the start
    plain = build_model("ResNet18", 0, 16)
    assert plain(paddle.to_tensor(images(1))).log_variance is None
    assert not {p.name for p in plain.parameters()} & set(HEAD)


def test_the_log_variance_is_bounded_and_the_head_sees_the_normalised_feature():
    from models.head import LOG_VARIANCE_LIMIT

    model = build_model("ResNet18", 0, 0, uncertainty=True)
    model.eval()
    x = paddle.to_tensor(images(2))
    pooled = model.backbone(x).numpy()
    weights = np.random.default_rng(3).normal(0, 5.0, (512, 1)).astype("float32")
    model.uncertainty_fc.weight.set_value(weights)
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    want = LOG_VARIANCE_LIMIT * np.tanh((unit @ weights)[:, 0] / LOG_VARIANCE_LIMIT)
    got = model(x).log_variance.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    model.uncertainty_fc.weight.set_value(1000 * weights)
    assert np.all(np.abs(model(x).log_variance.numpy()) <= LOG_VARIANCE_LIMIT)


def train_config(**overrides):
    settings = dict(model="ResNet18", image_shape=(3, 32, 32), embedding_size=8, loss_name="uncertaintytriplet",
                    uncertainty=True, alpha=1.0, lr=0.05, use_gpu=False)
    return defaults("train", **{**settings, **overrides})


def test_a_train_step_weights_both_branches_by_the_predicted_log_variance():
    config = train_config()
    x, y = images(8, seed=1), np.repeat(np.arange(4), 2).astype("int64")
    rng = np.random.default_rng(2)
    with static_mode():
        graph = programs.build_train_graph(config, 4, 10)
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            exe = paddle.static.Executor(paddle.CPUPlace())
            exe.run(graph.startup)
            head = scope.find_var("uncertainty_fc_weights").get_tensor()
            head.set(rng.normal(0, 0.05, (512, 1)).astype("float32"), paddle.CPUPlace())  # s differs per image
            weights = {p.name: np.array(scope.find_var(p.name).get_tensor()).copy()
                       for p in graph.main.global_block().all_parameters()}
            fetched = exe.run(graph.main, feed={programs.IMAGE: x, programs.LABEL: y},
                              fetch_list=[graph.fetch["loss_metric"], graph.fetch["loss_cls"]])
            trained_head = np.array(scope.find_var("uncertainty_fc_weights").get_tensor())
    assert not np.allclose(trained_head, weights["uncertainty_fc_weights"])  # the losses train the head
    # The same network eagerly, in training mode like the train program, with the same parameters.
    model = build_model("ResNet18", 4, 8, uncertainty=True)
    for parameter in model.parameters():
        parameter.set_value(weights[parameter.name])
    metric, logits, _, log_variance = model(paddle.to_tensor(x))
    assert float(log_variance.std()) > 1e-3
    labels = paddle.to_tensor(y)
    assert fetched[0].item() == pytest.approx(uncertainty_triplet(metric, labels, log_variance, margin=0.1).item(),
                                              rel=1e-4)
    assert fetched[1].item() == pytest.approx(uncertainty_softmax_loss(logits, labels, log_variance).item(), rel=1e-4)


def test_the_embedding_program_gives_sigma_squared():
    config = defaults("eval", model="ResNet18", image_shape=(3, 32, 32), uncertainty=True, use_gpu=False)
    with static_mode(), paddle.static.scope_guard(paddle.static.Scope()):
        graph = programs.build_embed_graph(config)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(graph.startup)
        offset = paddle.static.global_scope().find_var("uncertainty_fc_offset").get_tensor()
        offset.set(np.array([0.7], "float32"), paddle.CPUPlace())
        _, sigma2 = exe.run(graph.program, feed={programs.IMAGE: images(2)}, fetch_list=[graph.embedding,
                                                                                       graph.uncertainty])
        plain = programs.build_embed_graph(defaults("eval", model="ResNet18", image_shape=(3, 32, 32)))
    assert plain.uncertainty is None
    # s = 3 tanh(x / 3): bounded (models/head.py, LOG_VARIANCE_LIMIT), x = 0.7 with the weights at 0.
    np.testing.assert_allclose(sigma2, np.exp(3 * np.tanh(0.7 / 3)) * np.ones(2), rtol=1e-6)


@pytest.mark.parametrize("overrides,message", [
    (dict(uncertainty=False), "uncertaintytriplet weights each image by the uncertainty .* --uncertainty True"),
    (dict(loss_name="uncertaintysoftmax", uncertainty=False), "uncertaintysoftmax weights"),
    (dict(loss_name="batchhardtripletloss"), "learns only through an uncertainty loss .* not batchhardtripletloss")])
def test_the_head_and_an_uncertainty_loss_go_together(overrides, message):
    import losses

    config = train_config(**overrides)
    with pytest.raises(UserError, match=message):
        programs.check_uncertainty(config, losses.get(config.loss_name))


# ---- export, embedding and infer.py's dump ------------------------------------------------------

@pytest.fixture(scope="module")
def uncertainty_export(tmp_path_factory):
    """(exported folder, images, the program's features and sigma^2 of them): a fresh ResNet18 with the head
    (its weights made to vary), exported once for both engines."""
    from engine.embedder import export

    folder = str(tmp_path_factory.mktemp("uncertainty") / "model")
    config = defaults("infer", model="ResNet18", image_shape=(3, 32, 32), embedding_size=8, uncertainty=True,
                      use_gpu=False)
    x = images(3, seed=5)
    with static_mode(), paddle.static.scope_guard(paddle.static.Scope()):
        graph = programs.build_embed_graph(config)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(graph.startup)
        weights = paddle.static.global_scope().find_var("uncertainty_fc_weights").get_tensor()
        weights.set(np.random.default_rng(0).normal(0, 0.05, (512, 1)).astype("float32"), paddle.CPUPlace())
        want_features, want_sigma2 = exe.run(graph.program, feed={programs.IMAGE: x},
                                             fetch_list=[graph.embedding, graph.uncertainty])
        export(exe, graph.program, graph.image, graph.embedding, folder, config, graph.uncertainty)
    return folder, x, want_features, want_sigma2


@pytest.mark.parametrize("engine", ["paddle", "onnxruntime"])
def test_the_export_gives_sigma_squared_as_its_second_output(uncertainty_export, engine):
    from engine.embedder import Embedder

    folder, x, want_features, want_sigma2 = uncertainty_export
    embedder = Embedder(folder, use_gpu=False, engine=engine)
    features, sigma2 = embedder.embed(x)
    assert embedder.predicts_uncertainty and np.ptp(want_sigma2) > 1e-4
    np.testing.assert_allclose(features, want_features, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sigma2, want_sigma2, rtol=1e-4)
    np.testing.assert_allclose(embedder(x), features)


class _Loader:
    """Two batches of fake images, the way reader.TestLoader yields them."""
    image_list = type("List", (), {"source": "fake.txt"})
    num_rows = 5

    def batches(self):
        yield np.zeros((3, 1)), [0, 1, 2]
        yield np.ones((2, 1)), [3, 4]


class _Embedder:
    predicts_uncertainty = True

    def __call__(self, images):
        return self.embed(images)[0]

    def embed(self, images):
        return images + np.arange(len(images))[:, None], np.full(len(images), 2.0) + images[:, 0]


def test_embed_shards_gathers_sigma_squared_with_the_features():
    from engine.embedder import embed_shards

    features, rows = embed_shards(_Embedder(), _Loader(), "unused")
    np.testing.assert_array_equal(rows, np.arange(5))
    features, rows, sigma2 = embed_shards(_Embedder(), _Loader(), "unused", with_uncertainty=True)
    np.testing.assert_array_equal(sigma2, [2, 2, 2, 3, 3])
    np.testing.assert_array_equal(features[:, 0], [0, 1, 2, 1, 2])


# ---- eval.py: --uncertainty_weight and the uncertain fifths ---------------------------------------

def _brute_force_first_neighbours(features, offsets):
    """Per row, the other row of smallest squared distance between unit vectors + offset of the candidate."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    distances = ((unit[:, None] - unit[None]) ** 2).sum(-1) + offsets[None, :]
    np.fill_diagonal(distances, np.inf)
    return distances.argmin(axis=1)


def test_gallery_offsets_rank_by_squared_distance_plus_offset():
    from evaluation.evaluator import Evaluation, Settings

    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(40, 6)).astype("float32"), np.repeat(np.arange(10), 4)
    offsets = rng.uniform(0, 1.5, size=40).astype("float32")
    evaluation = Evaluation(features, labels, settings=Settings(ks=(1,)), gallery_offsets=offsets)
    want = labels[_brute_force_first_neighbours(features, offsets)] == labels
    np.testing.assert_array_equal(evaluation.neighbors.hits[:, 0], want)
    plain = Evaluation(features, labels, settings=Settings(ks=(1,))).neighbors.hits[:, 0]
    assert np.any(plain != want)  # the offsets change the rankings
    with pytest.raises(ValueError, match="not with post-processing"):
        Evaluation(features, labels, settings=Settings(re_ranking=True), gallery_offsets=offsets)


def test_reid_distances_take_the_offsets_too():
    from evaluation.evaluator import Evaluation, Settings

    rng = np.random.default_rng(1)
    query, gallery = rng.normal(size=(6, 4)).astype("float32"), rng.normal(size=(12, 4)).astype("float32")
    query_ids, gallery_ids = np.arange(6), np.tile(np.arange(6), 2)
    offsets = np.zeros(12, "float32")
    offsets[:6] = 10.0  # the first copy of every identity pushed behind everything else
    evaluation = Evaluation(gallery, gallery_ids, query, query_ids, gallery_cameras=np.zeros(12, int),
                            query_cameras=np.ones(6, int), settings=Settings(), gallery_offsets=offsets)
    average_precision, first_hit = evaluation.reid
    unit_q, unit_g = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (query, gallery))
    second_copy = ((unit_q[:, None] - unit_g[None, 6:]) ** 2).sum(-1)
    np.testing.assert_array_equal(first_hit, 1 + (second_copy < np.diag(second_copy)[:, None]).sum(1))


def test_uncertain_fifths_split_the_queries_by_sigma_squared():
    from engine.evaluate import uncertain_fifths
    from evaluation.evaluator import Evaluation, Settings

    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(10), 5)
    features = (rng.normal(size=(10, 8))[labels] + rng.normal(size=(50, 8))).astype("float32")
    evaluation = Evaluation(features, labels, settings=Settings(ks=(1,)))
    hit = evaluation.neighbors.hits[:, 0]
    assert 10 <= hit.sum() <= 40
    sigma2 = np.where(hit, 1.0, 3.0) + rng.uniform(0, 0.1, 50)  # the misses are the uncertain ones
    found = uncertain_fifths(evaluation, False, sigma2)
    assert found["uncertain_fifth_queries"] == 10
    order = np.argsort(sigma2)
    assert found["recall@1_most_uncertain_fifth"] == pytest.approx(hit[order[-10:]].mean())
    assert found["recall@1_least_uncertain_fifth"] == pytest.approx(hit[order[:10]].mean()) == 1.0
    assert found["recall@1_most_uncertain_fifth"] < 1.0


def test_the_weight_needs_a_model_that_predicts_uncertainty_and_no_post_processing():
    from cli.args import parse_args
    from engine.evaluate import Embedded, _uncertainty_offsets

    plain = Embedded(np.zeros((2, 3)), np.array([0, 1]), ["a", "b"], None)
    with pytest.raises(UserError, match="this one predicts none"):
        _uncertainty_offsets(defaults("eval", uncertainty_weight=0.5), plain)
    assert _uncertainty_offsets(defaults("eval"), plain) is None
    np.testing.assert_allclose(_uncertainty_offsets(defaults("eval", uncertainty_weight=0.5),
                                                    plain._replace(uncertainty=np.array([1.0, 4.0]))), [0.5, 2.0])
    for flags, message in ((["--uncertainty_weight=-1"], "must be a finite number"),
                           (["--uncertainty_weight=1", "--re_ranking=True"], "not with --re_ranking")):
        with pytest.raises(UserError, match=message):
            parse_args("eval", flags)
