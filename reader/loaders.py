"""Train and test loaders: samplers + decoding + transforms, in worker processes.

Both yield numpy arrays (float32 images [B, 3, H, W] and int64 ids) and work
the same with any number of workers, including when Paddle runs static graphs.
"""
import sys

import numpy as np

from reader.decode import MAX_PIXELS, BadImageError, load_rgb
from reader.samplers import PKSampler, ShuffleSampler, TripletSampler, class_members
from reader.transforms import CROP_AREA, CROP_ASPECT, EVAL_RESIZES, test_transform, train_transform
from reader.worker_pool import WorkerPool, run_in_process
from utility.errors import UserError

LAYOUTS = ("triplet", "pk", "shuffle")
# Training augmentation settings (keys of `augment`) and their defaults: the ImageNet recipe.
AUGMENT_DEFAULTS = {"color_jitter": False, "rotate": False, "random_erasing": False,
                    "crop_area": CROP_AREA, "crop_aspect": CROP_ASPECT, "hflip": True, "rotation_degrees": 0.0,
                    "ink_crop": False}
AUGMENTATIONS = tuple(AUGMENT_DEFAULTS)
CLASSES_NAMED = 5  # how many classes a note about small classes names


def make_train_loader(image_list, *, image_shape, batch_size, layout, samples_each_class, num_workers,
                      seed, augment=None, world_size=1, rank=0, max_pixels=MAX_PIXELS, fixed_k=False):
    """A TrainLoader for `image_list` (labelled) on device `rank` of `world_size`.

    layout: "triplet" (anchor, positive, negative triplets), "pk" (P classes x
    K=samples_each_class images) or "shuffle" (random batches). batch_size is
    the global batch; this device gets batch_size // world_size images.
    augment: dict with any of the keys of AUGMENT_DEFAULTS (the rest keep their defaults);
    `augment_from_args(args)` builds it from train.py's flags.
    max_pixels: larger images are unreadable (reader.decode.load_rgb; 0 or None = no limit).
    fixed_k: the loss fixes K (--samples_each_class does not apply), for the advice of error lines.
    Raises UserError at once for inconsistent sizes or a list that cannot fill a batch.
    """
    augment = check_augment(augment)
    _check_train_args(image_list, batch_size, layout, samples_each_class, world_size, rank, seed)
    sampler = _make_sampler(image_list, batch_size, layout, samples_each_class, seed, announce=rank == 0,
                            fixed_k=fixed_k)
    job = TrainBatchJob(image_list, tuple(image_shape), augment, max_pixels)
    return TrainLoader(sampler, job, batch_size // world_size, rank, num_workers)


class _Workers:
    """Runs a batch job in worker processes (in this process when num_workers is 0) until close().

    A context manager that stops its workers.
    """

    def __init__(self, job, num_workers, max_batch):
        self._job = job
        self._pool = WorkerPool(job, num_workers, max_batch, job.image_shape) if num_workers > 0 else None
        self._reported = set()  # unreadable paths already warned of: a loader re-run each epoch or evaluation

    def _warn_once(self, bad_paths, warning):
        """Print `warning` (a format of {path} and {reason}) once per unreadable path over the loader's life."""
        for path, reason in bad_paths:
            if path not in self._reported:
                self._reported.add(path)
                print("warning: " + warning.format(path=path, reason=reason), file=sys.stderr, flush=True)

    def _run(self, batches):
        """A runner yielding the job's output for each batch, in order; close() it when done."""
        if self._pool:
            return self._pool.run(batches)
        return run_in_process(self._job, batches, self._job.image_shape)

    def close(self):
        """Stop the worker processes."""
        if self._pool:
            self._pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class TrainLoader(_Workers):
    """Epochs of training batches for one device."""

    def __init__(self, sampler, job, device_batch, rank, num_workers):
        super().__init__(job, num_workers, device_batch)
        self.batches_per_epoch = sampler.batches_per_epoch
        self.device_batch = device_batch
        self._sampler = sampler
        self._rank = rank

    @property
    def sampler(self):
        return self._sampler

    def use_sampler(self, sampler):
        """Draw batches with `sampler` from the next epoch() on (divide and conquer re-clusters between passes)."""
        if sampler.batches_per_epoch != self.batches_per_epoch:
            raise ValueError("a new sampler must keep the number of batches per pass")
        self._sampler = sampler

    def device_items(self, epoch, batch_no):
        """(image index, sample seed) pairs of this device's share of one batch."""
        indices, seeds = self._sampler.batch(epoch, batch_no)
        share = slice(self._rank * self.device_batch, (self._rank + 1) * self.device_batch)
        return list(zip(indices[share].tolist(), seeds[share].tolist()))

    def epoch(self, epoch, start_batch=0):
        """Yield (images float32 [B, 3, H, W], class_ids int64 [B]) for batches start_batch.. of epoch.

        Skipped batches cost nothing: each batch is built from (seed, epoch, batch number).
        """
        runner = self._run(self.device_items(epoch, b) for b in range(start_batch, self.batches_per_epoch))
        try:
            for images, (class_ids, bad_paths) in runner:
                self._warn_once(bad_paths, "cannot read image {path} ({reason}); training on another image of "
                                           "its class instead")
                yield images, class_ids
        finally:
            runner.close()  # an epoch left early: wait for its batches in flight


class TrainBatchJob:
    """Decode and augment one device batch; an unreadable image is replaced by
    another image of its class, chosen from the sample's own seed."""

    def __init__(self, image_list, image_shape, augment, max_pixels=MAX_PIXELS):
        self.image_list = image_list
        self.image_shape = image_shape
        self.augment = augment
        self.max_pixels = max_pixels
        self.members = class_members(image_list.class_ids, image_list.num_classes)

    def __call__(self, items, out):
        bad_paths = []
        for row, (index, seed) in enumerate(items):
            out[row] = self._load(index, np.random.default_rng(seed), bad_paths)
        class_ids = self.image_list.class_ids[[index for index, _ in items]]
        return class_ids, bad_paths

    def _load(self, index, rng, bad_paths):
        for candidate in self._candidates(index, rng):
            path = self.image_list.paths[candidate]
            try:
                rgb = load_rgb(path, self.max_pixels)
            except BadImageError as err:
                bad_paths.append((path, err.reason))
                continue
            return train_transform(rgb, self.image_shape, rng, **self.augment)
        label = self.image_list.labels[index]
        raise UserError(f"{self.image_list.source}: no image of label {label} can be read "
                        f"(first: {bad_paths[0][0]}: {bad_paths[0][1]})")

    def _candidates(self, index, rng):
        yield index
        class_images = self.members[self.image_list.class_ids[index]]
        others = class_images[class_images != index]
        yield from rng.permutation(others).tolist()


def augment_from_args(args):
    """The `augment` dict of make_train_loader from train.py's flags."""
    return {name: getattr(args, name) for name in AUGMENTATIONS}


class TestLoader(_Workers):
    """Batches of a whole list in order, for embedding; its worker processes live until close().

    eval_resize: "crop" (resize to 256/224 of the input size, centre crop) or "full" (the whole image
    resized to the input size); see reader.transforms.test_transform. ink_crop: first the square
    around a drawing's strokes (reader.transforms.crop_to_ink), as the network was trained.
    `batches()` yields (images float32 [b, 3, H, W], row_indices int64 [b]), batch_size rows
    each (the last may be shorter), as often as it is called: a validation list is decoded by
    the same workers at every evaluation of a training run. An unreadable image raises UserError
    naming it, unless skip_bad: then it is reported on stderr and its row left out. An image of more
    than max_pixels pixels is unreadable (reader.decode.load_rgb; 0 or None = no limit).
    """

    def __init__(self, image_list, *, image_shape, batch_size, num_workers, skip_bad=False, rows=None,
                 eval_resize="crop", ink_crop=False, max_pixels=MAX_PIXELS):
        if batch_size <= 0:
            raise UserError(f"test batch size must be positive, got {batch_size}")
        if eval_resize not in EVAL_RESIZES:
            raise UserError(f"--eval_resize must be one of {', '.join(EVAL_RESIZES)}, got {eval_resize!r}")
        job = TestBatchJob(image_list.paths, tuple(image_shape), eval_resize, ink_crop, max_pixels)
        super().__init__(job, num_workers, batch_size)
        self.image_list = image_list
        self.skip_bad = skip_bad
        # `rows`: only these rows of the list (one device's share), in this order; default all.
        rows = np.arange(len(image_list.paths), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self.num_rows = len(rows)
        self._batches = [rows[start:start + batch_size] for start in range(0, len(rows), batch_size)]

    def batches(self):
        runner = self._run(self._batches)
        try:
            for (images, (readable, bad_paths)), rows in zip(runner, self._batches):
                if bad_paths and not self.skip_bad:
                    raise UserError(_bad_images_message(bad_paths))
                self._warn_once(bad_paths, "skipping unreadable image {path} ({reason})")
                if readable.any():
                    yield images[readable], rows[readable]
        finally:
            runner.close()


def _bad_images_message(bad_paths):
    listed = "; ".join(f"{path} ({reason})" for path, reason in bad_paths)
    return (f"cannot read {len(bad_paths)} image(s): {listed} "
            "(--skip_bad_images leaves them out)")


class TestBatchJob:
    """Decode and resize one batch for evaluation; unreadable rows are flagged, not raised."""

    def __init__(self, paths, image_shape, eval_resize="crop", ink_crop=False, max_pixels=MAX_PIXELS):
        self.paths = paths
        self.image_shape = image_shape
        self.eval_resize = eval_resize
        self.ink_crop = ink_crop
        self.max_pixels = max_pixels

    def __call__(self, rows, out):
        readable = np.ones(len(rows), dtype=bool)
        bad_paths = []
        for i, row in enumerate(rows):
            try:
                rgb = load_rgb(self.paths[row], self.max_pixels)
                out[i] = test_transform(rgb, self.image_shape, self.eval_resize, self.ink_crop)
            except BadImageError as err:
                readable[i] = False
                bad_paths.append((err.path, err.reason))
        return readable, bad_paths


def check_augment(augment):
    """`augment` with every setting filled in and checked; a value out of range is a UserError naming its flag."""
    augment = dict(augment or {})
    unknown = set(augment) - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(f"unknown augmentation(s) {sorted(unknown)}; known: {AUGMENTATIONS}")
    out = {**AUGMENT_DEFAULTS, **augment}
    for name in ("color_jitter", "rotate", "random_erasing", "hflip", "ink_crop"):
        out[name] = bool(out[name])
    low, high = out["crop_area"] = tuple(float(v) for v in out["crop_area"])
    if not 0 < low <= high <= 1:
        raise UserError(f"--crop_area MIN,MAX needs 0 < MIN <= MAX <= 1, got {low:g},{high:g}")
    low, high = out["crop_aspect"] = tuple(float(v) for v in out["crop_aspect"])
    if not 0 < low <= high:
        raise UserError(f"--crop_aspect MIN,MAX needs 0 < MIN <= MAX, got {low:g},{high:g}")
    out["rotation_degrees"] = float(out["rotation_degrees"])
    if not 0 <= out["rotation_degrees"] <= 180:
        raise UserError(f"--rotation_degrees must be in 0..180, got {out['rotation_degrees']:g}")
    return out


def _check_train_args(image_list, batch_size, layout, samples_each_class, world_size, rank, seed):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    if image_list.class_ids is None:
        raise UserError(f"{image_list.source}: training needs a label on every line")
    if seed < 0:
        raise UserError(f"--seed must be 0 or more, got {seed}")
    check_device_batch(batch_size, layout, samples_each_class, world_size)


def check_device_batch(batch_size, layout, samples_each_class, world_size):
    """UserError unless the global batch splits into `world_size` equal device batches of the layout's
    whole units (P x K: whole classes of K images; triplets: whole triplets)."""
    if batch_size <= 0 or batch_size % world_size:
        raise UserError(f"--train_batch_size {batch_size} must be a positive multiple of the "
                        f"{world_size} device(s)")
    device_batch = batch_size // world_size
    if layout == "pk" and samples_each_class <= 0:
        raise UserError(f"--samples_each_class must be positive, got {samples_each_class}")
    if layout == "pk" and device_batch % samples_each_class:
        raise UserError(f"--train_batch_size {batch_size} must be a multiple of "
                        f"--samples_each_class {samples_each_class} on each of the {world_size} device(s) "
                        f"(each device gets {device_batch} images of whole classes)")
    if layout == "triplet" and device_batch % 3:
        raise UserError(f"--train_batch_size {batch_size} must be a multiple of 3 (triplets) "
                        f"on each of the {world_size} device(s); each device gets {device_batch}")


def _make_sampler(image_list, batch_size, layout, samples_each_class, seed, announce, fixed_k=False):
    num_images = len(image_list.paths)
    if layout == "shuffle":
        return ShuffleSampler(num_images, batch_size, seed)
    members = class_members(image_list.class_ids, image_list.num_classes)
    if layout == "pk":
        classes_per_batch = batch_size // samples_each_class
        if classes_per_batch > len(members):
            most = len(members) * samples_each_class
            advice = (f"this loss takes {samples_each_class} images of each class whatever --samples_each_class "
                      f"says: lower --train_batch_size to at most {most}, or train on a list with more classes"
                      if fixed_k else f"lower --train_batch_size to at most {most} or raise --samples_each_class")
            raise UserError(f"{image_list.source}: a batch of {batch_size} = {classes_per_batch} classes x "
                            f"{samples_each_class} images needs {classes_per_batch} classes, the list has "
                            f"{len(members)} ({advice})")
        if announce:
            _note_small_classes(image_list, members, samples_each_class)
        return PKSampler(members, num_images, batch_size, samples_each_class, seed)
    if len(members) < 2:
        raise UserError(f"{image_list.source}: triplets need at least 2 classes, the list has {len(members)}")
    if announce:
        _note_small_classes(image_list, members, 2)
    return TripletSampler(members, num_images, batch_size, seed)


def _note_small_classes(image_list, members, needed):
    small = [image_list.classes[c] for c, images in enumerate(members) if len(images) < needed]
    if small:
        named = ", ".join(str(label) for label in small[:CLASSES_NAMED])
        more = ", ..." if len(small) > CLASSES_NAMED else ""
        print(f"note: {len(small)} of {len(members)} classes have fewer than {needed} images "
              f"(labels {named}{more}); their images are repeated within a batch", flush=True)
