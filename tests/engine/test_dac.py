"""Divide and conquer: cluster-wise batches, the learner's slice of the embedding, resume with it on."""
import os

import numpy as np
import pytest
from train_runs import final_parameters, read_state, run_train, step_records

import losses
from cli.args import defaults
from engine.dac import DivideAndConquer
from engine.trainer import Position
from reader.samplers import ClusterSampler
from utility.errors import UserError


def _cluster_sampler(world_size=1, layout="pk"):
    class_ids = np.repeat(np.arange(8), 6)          # 8 classes x 6 images
    assignment = (class_ids >= 5).astype(np.int64)  # cluster 0: classes 0-4 (30 images), cluster 1: 5-7 (18)
    return class_ids, assignment, ClusterSampler(class_ids, assignment, 2, 12 * world_size, world_size, layout, 3,
                                                 seed=7)


@pytest.mark.parametrize("layout", ["pk", "triplet"])
def test_each_device_share_comes_from_one_cluster(layout):
    class_ids, assignment, sampler = _cluster_sampler(world_size=2, layout=layout)
    seen = []
    for batch_no in range(sampler.batches_per_epoch):
        indices, seeds = sampler.batch(3, batch_no)
        assert len(indices) == len(seeds) == 24
        for rank, cluster in enumerate(sampler.clusters(3, batch_no)):
            share = indices[rank * 12:(rank + 1) * 12]
            assert (assignment[share] == cluster).all()
            if layout == "pk":
                assert all(len(set(class_ids[share[i:i + 3]])) == 1 for i in range(0, 12, 3))  # K=3 of a class
            else:
                triplets = class_ids[share].reshape(-1, 3)
                assert (triplets[:, 0] == triplets[:, 1]).all() and (triplets[:, 0] != triplets[:, 2]).all()
            seen.append(cluster)
    indices_again, _ = sampler.batch(3, 0)
    assert np.array_equal(indices_again, sampler.batch(3, 0)[0])  # a function of (seed, pass, batch)
    assert set(seen) == {0, 1}


def test_clusters_are_visited_in_proportion_to_their_size():
    _, _, sampler = _cluster_sampler()
    draws = [sampler.clusters(epoch, b)[0] for epoch in range(60) for b in range(4)]
    assert np.mean(np.array(draws) == 0) == pytest.approx(30 / 48, abs=0.07)


class FakeLoader:
    def __init__(self, sampler):
        self.sampler = sampler


def test_the_loss_sees_one_learner_slice_until_full_training():
    _, assignment, sampler = _cluster_sampler()
    config = defaults("train", dac_clusters=2, dac_full_from=5)
    dac = DivideAndConquer(config, None, FakeLoader(sampler), None, "pk", 3, embedding_dim=8)
    for batch_no in range(4):
        cluster = sampler.clusters(1, batch_no)[0]
        mask = dac.mask(Position(pass_id=1, batch=batch_no))
        assert mask.tolist() == ([1] * 4 + [0] * 4 if cluster == 0 else [0] * 4 + [1] * 4)
    assert dac.mask(Position(pass_id=5, batch=0)).tolist() == [1] * 8


@pytest.mark.usefixtures("no_recall")
def test_resume_with_divide_and_conquer_equals_the_uninterrupted_run(tiny_dataset, tmp_path, capsys):
    common = ["--loss_name=batchhardtripletloss", "--samples_each_class=3", "--embedding_size=8",
              "--dac_clusters=2", "--dac_period=1", "--save_iter_step=5", "--test_iter_step=100", "--lr=0.05"]
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    run_train(tiny_dataset, straight, *common, iters=6)
    out = capsys.readouterr().out
    assert "Divide and conquer, pass 0: 2 clusters of" in out and "Divide and conquer, pass 1:" in out
    run_train(tiny_dataset, resumed, *common, f"--checkpoint={straight}/ResNet18/5", iters=6)
    assert "Divide and conquer" not in capsys.readouterr().out  # the pass's clustering came back from the checkpoint
    assert len(read_state(os.path.join(straight, "ResNet18", "5"))["dac"]["assignment"]) == 48
    first, second = step_records(straight), step_records(resumed)
    assert [r["iter"] for r in second] == [5]
    assert second[0]["loss_metric"] == first[5]["loss_metric"]
    want = final_parameters(os.path.join(straight, "ResNet18", "6"))
    got = final_parameters(os.path.join(resumed, "ResNet18", "6"))
    for name in ("conv1_weights", "embedding_fc_weights"):
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize("flags, message", [
    (["--dac_clusters=1"], "--dac_clusters must be 0 .off. or 2 or more"),
    (["--dac_clusters=2", "--dac_period=0"], "--dac_period positive"),
    (["--dac_clusters=2", "--loss_name=softmax"], "--dac_clusters needs a pair loss"),
])
def test_options_that_cannot_apply_are_refused(flags, message):
    from engine.dac import check_options

    config = defaults("train", **{flag[2:].split("=")[0]: _value(flag) for flag in flags})
    with pytest.raises(UserError, match=message):
        check_options(config, losses.get(config.loss_name))


def _value(flag):
    text = flag.split("=")[1]
    return int(text) if text.isdigit() else text
