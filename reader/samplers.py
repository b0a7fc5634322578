"""Training batch samplers.

A sampler builds the GLOBAL batch (all devices) number `batch_no` of `epoch`
from a random generator seeded with (seed, epoch, batch_no) only, so any batch
can be built directly (resuming mid-epoch costs nothing) and the result does
not depend on worker count or timing. Each device takes its own contiguous
slice; the layouts below keep a class's images together, so with P x K
batches every device gets whole classes and no class appears on two devices.

`batch(epoch, batch_no)` returns (image indices, per-sample seeds), both
int64 arrays of length batch_size; the seeds drive each sample's augmentation.
"""
import numpy as np

SEED_LIMIT = 2**63


def batch_rng(seed, epoch, batch_no):
    return np.random.default_rng([seed, epoch, batch_no])


def _sample_seeds(rng, count):
    return rng.integers(0, SEED_LIMIT, size=count, dtype=np.int64)


def _pick(rng, members, count):
    """count images of one class, without replacement unless the class is too small."""
    return rng.choice(members, size=count, replace=len(members) < count)


def class_members(class_ids, num_classes):
    """List of index arrays, one per class id, in list order."""
    order = np.argsort(class_ids, kind="stable")
    bounds = np.cumsum(np.bincount(class_ids, minlength=num_classes))[:-1]
    return np.split(order, bounds)


class ShuffleSampler:
    """Plain random batches: each epoch walks a fresh permutation of the list."""

    def __init__(self, num_images, batch_size, seed):
        self.num_images = num_images
        self.batch_size = batch_size
        self.seed = seed
        self.batches_per_epoch = max(1, num_images // batch_size)
        self._order_epoch, self._order = None, None

    def _epoch_order(self, epoch):
        if self._order_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            copies = -(-self.batch_size // self.num_images)  # lists shorter than a batch repeat
            self._order = np.concatenate([rng.permutation(self.num_images) for _ in range(copies)])
            self._order_epoch = epoch
        return self._order

    def batch(self, epoch, batch_no):
        start = batch_no * self.batch_size
        indices = self._epoch_order(epoch)[start:start + self.batch_size]
        return indices.astype(np.int64), _sample_seeds(batch_rng(self.seed, epoch, batch_no), self.batch_size)


class PKSampler:
    """P distinct classes x K images each; a class's K images are consecutive.

    Classes with fewer than K images are sampled with replacement.
    """

    def __init__(self, members, num_images, batch_size, samples_each_class, seed):
        self.members = members
        self.classes_per_batch = batch_size // samples_each_class
        self.samples_each_class = samples_each_class
        self.batch_size = batch_size
        self.seed = seed
        self.batches_per_epoch = max(1, num_images // batch_size)

    def batch(self, epoch, batch_no):
        rng = batch_rng(self.seed, epoch, batch_no)
        classes = rng.choice(len(self.members), size=self.classes_per_batch, replace=False)
        indices = np.concatenate([_pick(rng, self.members[c], self.samples_each_class) for c in classes])
        return indices.astype(np.int64), _sample_seeds(rng, self.batch_size)


class TripletSampler:
    """Consecutive (anchor, positive, negative) triplets.

    Anchor and positive share a class (the same image twice only when the class
    has one image); the negative comes from another class. The triplets of one
    batch have distinct anchor classes while there are enough classes.
    """

    def __init__(self, members, num_images, batch_size, seed):
        self.members = members
        self.triplets_per_batch = batch_size // 3
        self.batch_size = batch_size
        self.seed = seed
        self.batches_per_epoch = max(1, num_images // batch_size)

    def batch(self, epoch, batch_no):
        rng = batch_rng(self.seed, epoch, batch_no)
        num_classes = len(self.members)
        anchors = rng.choice(num_classes, size=self.triplets_per_batch,
                             replace=self.triplets_per_batch > num_classes)
        triplets = []
        for anchor_class in anchors:
            negative_class = int(rng.integers(num_classes - 1))
            negative_class += negative_class >= anchor_class  # any class but the anchor's
            triplets.append(_pick(rng, self.members[anchor_class], 2))
            triplets.append(_pick(rng, self.members[negative_class], 1))
        indices = np.concatenate(triplets)
        return indices.astype(np.int64), _sample_seeds(rng, self.batch_size)


def batches_of_one_pass(labels, layout, batch_size, samples_each_class, seed):
    """Row batches covering one pass over `labels` (any integers) in a loss's layout: triplets or P x K.

    For eval.py's test_loss: the evaluation set laid out as the loss trains on it.
    """
    classes, class_ids = np.unique(labels, return_inverse=True)
    members = class_members(class_ids, len(classes))
    if layout == "triplet":
        sampler = TripletSampler(members, len(labels), max(3, batch_size // 3 * 3), seed)
    else:
        k = samples_each_class
        classes_per_batch = min(len(classes), max(2, batch_size // k))
        sampler = PKSampler(members, len(labels), classes_per_batch * k, k, seed)
    return [sampler.batch(0, b)[0] for b in range(sampler.batches_per_epoch)]


class ClusterSampler:
    """Divide and conquer: each device's share of a batch comes from the images of one cluster.

    `assignment` [N] gives each image's cluster. For each device, the cluster is drawn in
    proportion to the clusters' sizes (among those that can fill a batch) from (seed, epoch,
    batch_no, rank), so batches stay a function of those numbers. Within the cluster the
    share is laid out as the loss needs: P classes x K images ("pk") or triplets ("triplet"),
    classes repeating only when the cluster has too few of them.
    """

    def __init__(self, class_ids, assignment, num_clusters, batch_size, world_size, layout, samples_each_class,
                 seed):
        self.layout, self.k, self.seed = layout, samples_each_class, seed
        self.batch_size, self.world_size = batch_size, world_size
        self.device_batch = batch_size // world_size
        self.batches_per_epoch = max(1, len(class_ids) // batch_size)
        self.members = []  # per cluster: list of index arrays, one per class present in it
        for cluster in range(num_clusters):
            in_cluster = np.flatnonzero(assignment == cluster)
            classes = np.unique(class_ids[in_cluster])
            self.members.append([in_cluster[class_ids[in_cluster] == c] for c in classes])
        sizes = np.array([sum(len(m) for m in members) if len(members) >= 2 else 0 for members in self.members],
                         dtype=np.float64)
        if sizes.sum() == 0:
            raise ValueError("no cluster holds two classes: divide and conquer cannot draw a batch")
        self.weights = sizes / sizes.sum()

    def clusters(self, epoch, batch_no):
        """The cluster of each device's share of batch `batch_no`."""
        return [int(np.random.default_rng([self.seed, epoch, batch_no, rank, 1]).choice(len(self.weights),
                                                                                       p=self.weights))
                for rank in range(self.world_size)]

    def batch(self, epoch, batch_no):
        shares = [self._share(cluster, np.random.default_rng([self.seed, epoch, batch_no, rank, 2]))
                  for rank, cluster in enumerate(self.clusters(epoch, batch_no))]
        rng = batch_rng(self.seed, epoch, batch_no)
        return np.concatenate(shares).astype(np.int64), _sample_seeds(rng, self.batch_size)

    def _share(self, cluster, rng):
        members = self.members[cluster]
        if self.layout == "pk":
            p = self.device_batch // self.k
            chosen = rng.choice(len(members), size=p, replace=p > len(members))
            return np.concatenate([_pick(rng, members[c], self.k) for c in chosen])
        rows = []
        for _ in range(self.device_batch // 3):
            anchor, negative = rng.choice(len(members), size=2, replace=False)
            rows += [_pick(rng, members[anchor], 2), _pick(rng, members[negative], 1)]
        return np.concatenate(rows)
