"""Helpers for the reader tests: tiny image trees and list files in a temp dir."""
import os

import cv2
import numpy as np


def write_image(path, height=32, width=32, seed=0):
    """A random-content RGB PNG; returns the RGB array written."""
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return rgb


def write_list(path, lines):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return str(path)


def make_dataset(root, images_per_class, labels=None, size=32):
    """Write images for classes with the given image counts and a list file.

    labels defaults to 10, 20, 30, ... so that original labels differ from class ids.
    Returns (list path, data dir).
    """
    labels = labels or [10 * (c + 1) for c in range(len(images_per_class))]
    lines = []
    for class_no, (label, count) in enumerate(zip(labels, images_per_class)):
        for k in range(count):
            rel_path = f"class {label}/img_{k}.png"
            write_image(os.path.join(root, rel_path), size, size, seed=1000 * class_no + k)
            lines.append(f"{rel_path} {label}")
    return write_list(os.path.join(root, "list.txt"), lines), str(root)
