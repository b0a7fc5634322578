"""List files from a folder of class subfolders (`photos/cat/1.jpg`, `photos/dog/7.png`, ...).

    python -m data.folder --image_dir photos --out_dir lists

Writes OUT/list.txt, one `cat/1.jpg LABEL` line per image (paths relative to the image folder:
pass it as --data_dir; labels 0..C-1 in the sorted order of the folder names), and
OUT/classes.txt, one `LABEL folder-name` line per class. train.py, eval.py and infer.py read
the list; `index.py build --gallery_dir photos` reads the folder itself (label = folder name).
"""
import argparse
import os

from utility.errors import UserError, run_main

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
LIST_FILE = "list.txt"
CLASSES_FILE = "classes.txt"


def class_images(image_dir):
    """[(path relative to image_dir, class folder name)] of every image below a class subfolder, sorted.

    Images anywhere below a class folder belong to it; hidden files and folders are skipped, and
    files lying directly in image_dir (outside any class folder) are left out.
    """
    if not os.path.isdir(image_dir):
        raise UserError(f"image folder not found: {image_dir}")
    found = []
    for name in sorted(os.listdir(image_dir)):
        class_dir = os.path.join(image_dir, name)
        if name.startswith(".") or not os.path.isdir(class_dir):
            continue
        for root, folders, files in os.walk(class_dir):
            folders[:] = sorted(f for f in folders if not f.startswith("."))
            for file in sorted(files):
                if not file.startswith(".") and file.lower().endswith(IMAGE_EXTENSIONS):
                    found.append((os.path.relpath(os.path.join(root, file), image_dir), name))
    if not found:
        raise UserError(f"{image_dir} has no images in class subfolders ({image_dir}/CLASS/IMAGE, "
                        f"extensions {' '.join(IMAGE_EXTENSIONS)})")
    return found


def write_lists(image_dir, out_dir):
    """Write OUT/list.txt and OUT/classes.txt; returns (number of images, number of classes)."""
    images = class_images(image_dir)
    classes = sorted({name for _, name in images})
    label_of = {name: label for label, name in enumerate(classes)}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, LIST_FILE), "w", encoding="utf-8") as f:
        f.writelines(f"{path} {label_of[name]}\n" for path, name in images)
    with open(os.path.join(out_dir, CLASSES_FILE), "w", encoding="utf-8") as f:
        f.writelines(f"{label} {name}\n" for label, name in enumerate(classes))
    return len(images), len(classes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_dir", required=True, help="folder of class subfolders")
    parser.add_argument("--out_dir", required=True, help=f"where {LIST_FILE} and {CLASSES_FILE} go")
    args = parser.parse_args(argv)
    images, classes = write_lists(args.image_dir, args.out_dir)
    print(f"Wrote {images} images of {classes} classes to {os.path.join(args.out_dir, LIST_FILE)} "
          f"(paths relative to {args.image_dir}: pass --data_dir={args.image_dir}) and "
          f"{os.path.join(args.out_dir, CLASSES_FILE)}")


if __name__ == "__main__":
    run_main(main)
