"""Divide and conquer (Sanakoyeu et al., CVPR 2019): K learners, each a slice of the embedding, each
trained on one cluster of the data.

Every --dac_period passes the training list is embedded with the current network and clustered by
k-means into --dac_clusters clusters; each device's share of a batch then comes from one cluster
(reader.samplers.ClusterSampler), and its metric loss sees only that cluster's slice of the embedding
(the other dimensions are multiplied by 0: the program's DAC_MASK input). From pass --dac_full_from
on, batches are drawn as usual and the loss sees the whole embedding. Evaluation and export always use
the whole embedding. The assignment is saved in checkpoints (under "dac"), so a resumed run goes on with it.
It is an extension of the training loop (engine/extensions.py).
"""
import os
import time

import numpy as np
import paddle

from engine.embedder import Embedder, embed_list, test_loader
from engine.extensions import Extension
from evaluation.metrics import kmeans_clusters
from reader.samplers import ClusterSampler
from utility.errors import UserError

SHARED_FILE = "dac-assignment-pass{}.npy"  # how device 0 hands the clustering to the other devices
DAC_MASK = "dac_mask"


def check_options(config, spec):
    """UserError, before any work, when the --dac_* flags cannot apply."""
    if config.dac_clusters < 0 or config.dac_clusters == 1 or config.dac_period <= 0:
        raise UserError(f"--dac_clusters must be 0 (off) or 2 or more and --dac_period positive, "
                        f"got {config.dac_clusters} and {config.dac_period}")
    if config.dac_clusters and spec.layout == "shuffle":
        raise UserError(f"--dac_clusters needs a pair loss (P x K or triplet batches), not {config.loss_name}")


class DivideAndConquer(Extension):
    name = "dac"

    @classmethod
    def of(cls, config, spec, train_list, train_loader, world_size, rank):
        """Divide and conquer of --dac_clusters (checked by check_options), or None when it is off. Device 0
        opens the loader of the training list to embed (its workers are forked here, before Paddle starts
        its threads)."""
        if not config.dac_clusters:
            return None
        if 2 * config.dac_clusters > train_list.num_classes:  # refused now, not by k-means or a sampler mid-run
            raise UserError(f"--dac_clusters {config.dac_clusters} is too many for the {train_list.num_classes} "
                            f"classes of {train_list.source}: each cluster needs 2 classes or more for its pair "
                            f"batches; use --dac_clusters {train_list.num_classes // 2} or fewer")
        # An unreadable image is reported and joins no cluster.
        embed_loader = test_loader(config, train_list, skip_bad=True) if rank == 0 else None
        return cls(config, train_list, train_loader, embed_loader, spec.layout,
                   spec.samples_each_class(config.samples_each_class), world_size=world_size, rank=rank)

    def __init__(self, config, train_list, train_loader, embed_loader, layout, samples_each_class,
                 embedding_dim=None, world_size=1, rank=0):
        self.config, self.train_list = config, train_list
        self.layout, self.samples_each_class = layout, samples_each_class
        self.plain_sampler = train_loader.sampler
        self.train_loader, self.embed_loader = train_loader, embed_loader
        self.clusters, self.embedding_dim = config.dac_clusters, embedding_dim
        self.world_size, self.rank = world_size, rank
        self.assignment, self.assigned_pass = None, None

    def add_to_graph(self, inputs):
        """The loss sees the embedding and the reference rows times the fed mask (one learner's slice)."""
        self.embedding_dim = inputs.embedding.shape[-1]
        mask = paddle.static.data(DAC_MASK, [self.embedding_dim], "float32")
        inputs.embedding = inputs.embedding * mask
        if inputs.references is not None:
            inputs.references = inputs.references * mask

    def before_step(self, step):
        return {DAC_MASK: self.mask(step.position)}

    def close(self):
        if self.embed_loader:
            self.embed_loader.close()

    def full_embedding(self, pass_id):
        return self.config.dac_full_from is not None and pass_id >= self.config.dac_full_from

    def before_pass(self, pass_id, exe, graph):
        """Re-cluster when this pass is due (and not already done, e.g. before a resume); pick the sampler."""
        if self.full_embedding(pass_id):
            self.train_loader.use_sampler(self.plain_sampler)
            return
        due = pass_id - pass_id % self.config.dac_period
        if self.assigned_pass != due:
            self.assignment = self._cluster(due, exe, graph)
            self.assigned_pass = due
        self.train_loader.use_sampler(self._sampler())

    def mask(self, position):
        """The dac_mask feed [D] of this device for the batch at `position`: 1 on its cluster's slice."""
        if self.full_embedding(position.pass_id):
            return np.ones(self.embedding_dim, np.float32)
        cluster = self.train_loader.sampler.clusters(position.pass_id, position.batch)[self.rank]
        bounds = np.linspace(0, self.embedding_dim, self.clusters + 1).round().astype(int)
        mask = np.zeros(self.embedding_dim, np.float32)
        mask[bounds[cluster]:bounds[cluster + 1]] = 1.0
        return mask

    def state(self):
        if self.assignment is None:
            return None
        return {"pass": self.assigned_pass, "assignment": self.assignment.tolist()}

    def restore(self, state, source=None):
        if state:
            self.assigned_pass, self.assignment = state["pass"], np.asarray(state["assignment"], np.int64)

    def _sampler(self):
        return ClusterSampler(self.train_list.class_ids, self.assignment, self.clusters,
                              self.config.train_batch_size, self.world_size, self.layout,
                              self.samples_each_class, self.config.seed + 1)

    def _cluster(self, pass_id, exe, graph):
        shared = os.path.join(self.config.model_save_dir, SHARED_FILE.format(pass_id))
        if self.rank > 0:
            return _wait_for(shared)
        embedder = Embedder.from_program(exe, graph.test, graph.test_image, graph.test_embedding, self.config)
        features, rows = embed_list(embedder, self.embed_loader, show_progress=False)
        assignment = np.full(len(self.train_list.paths), -1, np.int64)  # unreadable images join no cluster
        features /= np.linalg.norm(features, axis=1, keepdims=True) + 1e-12
        assignment[rows] = kmeans_clusters(features, self.clusters, seed=self.config.seed + pass_id)
        sizes = np.bincount(assignment[assignment >= 0], minlength=self.clusters)
        print(f"Divide and conquer, pass {pass_id}: {self.clusters} clusters of "
              f"{', '.join(map(str, sizes))} images", flush=True)
        if self.world_size > 1:
            np.save(shared + ".tmp.npy", assignment)
            os.replace(shared + ".tmp.npy", shared)
            if self.assigned_pass is not None:  # every device has read the previous one by now
                previous = os.path.join(self.config.model_save_dir, SHARED_FILE.format(self.assigned_pass))
                if os.path.exists(previous):
                    os.remove(previous)
        return assignment


def _wait_for(path, timeout_s=3600):
    start = time.time()
    while not os.path.exists(path):
        if time.time() - start > timeout_s:
            raise RuntimeError(f"device 0 did not write {path} within {timeout_s} s")
        time.sleep(0.5)
    return np.load(path)
