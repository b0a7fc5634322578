"""Reader throughput (images/s) of the train and test pipelines, per worker count.

    python bench/bench_reader.py --workers=0,1,2 --image_shape=3,224,224

Two image sets, written to a temporary directory:
- "omniglot": --images PNGs (105x105, 1-bit) of an Omniglot zip, 4 per character;
- "jpeg": --images synthetic 500x375 JPEGs (quality 90, smooth content plus
  noise), the size of CUB-200 photos.
Train = decode + random-resized crop + flip (+ --augment: colour jitter,
rotation, random erasing), P x K batches; test = decode + resize + centre crop.
With --compare_paddle, the same train job also runs through paddle.io.DataLoader.
"""
import argparse
import os
import tempfile
import time
import zipfile

import cv2
import numpy as np

from cli.args import image_shape, int_list
from reader import ImageList, TestLoader, make_train_loader, read_image_list
from reader.loaders import TrainBatchJob

DEFAULT_ZIP = "/work/shared/data/omniglot/images_background_small1.zip"
IMAGES_PER_CLASS = 4
JPEG_SIZE = (375, 500)


def write_omniglot(zip_path, out_dir, count):
    """Extract IMAGES_PER_CLASS PNGs of each character until `count`; the character is the class."""
    with zipfile.ZipFile(zip_path) as archive:
        by_character = {}
        for name in sorted(n for n in archive.namelist() if n.endswith(".png")):
            by_character.setdefault(os.path.dirname(name), []).append(name)
        chosen = [names[:IMAGES_PER_CLASS] for names in by_character.values()]
        lines = []
        for class_id, names in enumerate(chosen[:count // IMAGES_PER_CLASS]):
            for name in names:
                archive.extract(name, out_dir)
                lines.append(f"{name} {class_id}")
    return _write_list(out_dir, lines)


def write_jpegs(out_dir, count):
    """Smooth random content (upscaled 24x32 noise) plus fine noise, like a photo's spectrum."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        coarse = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        image = cv2.resize(coarse, JPEG_SIZE[::-1], interpolation=cv2.INTER_CUBIC).astype(np.float32)
        image += rng.normal(0, 12, image.shape).astype(np.float32)
        name = f"jpeg/{i:04d}.jpg"
        os.makedirs(os.path.join(out_dir, "jpeg"), exist_ok=True)
        cv2.imwrite(os.path.join(out_dir, name), np.clip(image, 0, 255).astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        lines.append(f"{name} {i // IMAGES_PER_CLASS}")
    return _write_list(out_dir, lines)


def _write_list(out_dir, lines):
    path = os.path.join(out_dir, "list.txt")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def time_batches(batches, count):
    """Images per second over `count` batches, after one warm-up batch."""
    iterator = iter(batches)
    next(iterator)
    images = 0
    start = time.perf_counter()
    for _ in range(count):
        images += len(next(iterator)[0])
    return images / (time.perf_counter() - start)


def endless_train_batches(loader):
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def one_long_test_pass(image_list, shape, batch_size, workers, count):
    """A test loader over the list repeated to (count + 1) batches: one pass, as eval makes."""
    rows = (count + 1) * batch_size
    repeats = -(-rows // len(image_list))
    long_list = ImageList((image_list.paths * repeats)[:rows], None, None, None, image_list.source)
    loader = TestLoader(long_list, image_shape=shape, batch_size=batch_size, num_workers=workers)
    try:
        yield from loader.batches()
    finally:
        loader.close()


def paddle_train_rate(image_list, shape, batch_size, workers, augment, count):
    """The same TrainBatchJob, one sample per __getitem__, through paddle.io.DataLoader."""
    import paddle

    loader = make_train_loader(image_list, image_shape=shape, batch_size=batch_size, layout="pk",
                               samples_each_class=2, num_workers=0, seed=0, augment=augment)
    job = TrainBatchJob(image_list, shape, augment or dict(color_jitter=False, rotate=False, random_erasing=False))

    class Samples(paddle.io.Dataset):
        def __len__(self):
            return len(image_list)

        def __getitem__(self, item):
            out = np.empty((1,) + shape, dtype=np.float32)
            class_ids, _ = job([item], out)
            return out[0], class_ids[0]

    class Batches(paddle.io.Sampler):
        def __iter__(self):
            for batch_no in range(count + 1):
                yield loader.device_items(batch_no // loader.batches_per_epoch, batch_no % loader.batches_per_epoch)

        def __len__(self):
            return count + 1

    data = paddle.io.DataLoader(Samples(), batch_sampler=Batches(), num_workers=workers,
                                use_shared_memory=True, return_list=True)
    batches = iter(data)
    rate = time_batches(([images.numpy(), ids.numpy()] for images, ids in batches), count)
    for _ in batches:  # let the DataLoader finish, so that its workers exit quietly
        pass
    return rate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int_list, default=[0, 1, 2])
    parser.add_argument("--image_shape", type=image_shape, default=(3, 224, 224))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per measurement")
    parser.add_argument("--images", type=int, default=200, help="images in each set")
    parser.add_argument("--augment", action="store_true", help="also colour jitter, rotation, random erasing")
    parser.add_argument("--omniglot_zip", default=DEFAULT_ZIP)
    parser.add_argument("--compare_paddle", action="store_true")
    bench = parser.parse_args()
    augment = dict(color_jitter=True, rotate=True, random_erasing=True) if bench.augment else None

    with tempfile.TemporaryDirectory() as tmp:
        sets = {"jpeg": write_jpegs(os.path.join(tmp, "jpeg"), bench.images)}
        if os.path.exists(bench.omniglot_zip):
            sets["omniglot"] = write_omniglot(bench.omniglot_zip, os.path.join(tmp, "omniglot"), bench.images)
        print(f"load average before: {os.getloadavg()[0]:.2f}; batch {bench.batch_size}, "
              f"{bench.image_shape[1]}x{bench.image_shape[2]}, augment: {bool(augment)}")
        print(f"{'set':<9} {'pipeline':<16} {'workers':>7} {'img/s':>8}")
        for set_name, list_path in sets.items():
            image_list = read_image_list(list_path, os.path.dirname(list_path))
            for workers in bench.workers:
                with make_train_loader(image_list, image_shape=bench.image_shape, batch_size=bench.batch_size,
                                       layout="pk", samples_each_class=2, num_workers=workers, seed=0,
                                       augment=augment) as loader:
                    rate = time_batches(endless_train_batches(loader), bench.batches)
                print(f"{set_name:<9} {'train':<16} {workers:>7} {rate:>8.0f}", flush=True)
                batches = one_long_test_pass(image_list, bench.image_shape, bench.batch_size, workers, bench.batches)
                rate = time_batches(batches, bench.batches)
                print(f"{set_name:<9} {'test':<16} {workers:>7} {rate:>8.0f}", flush=True)
                if bench.compare_paddle and workers:
                    rate = paddle_train_rate(image_list, bench.image_shape, bench.batch_size, workers,
                                             augment, bench.batches)
                    print(f"{set_name:<9} {'train (paddle)':<16} {workers:>7} {rate:>8.0f}", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
