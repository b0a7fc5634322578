"""infer.py's feature dumps: the files of a dump folder, writing one, and reading one back for an index.

A dump folder holds features.npy (float32, one row per image), labels.npy (int64, -1 without a label),
paths.txt (one path per line), fingerprint.json ({"fingerprint", "embedding_size"} of the model that
embedded them) and, when the model predicts its uncertainty, uncertainty.npy (float32 sigma^2 per row).
`index.py build --features DUMP` indexes it without embedding the images again.
"""
import json
import os

import numpy as np

from utility.errors import UserError
from utility.files import save_npy, write_text

FEATURES = "features.npy"
LABELS = "labels.npy"
PATHS = "paths.txt"
FINGERPRINT = "fingerprint.json"
UNCERTAINTY = "uncertainty.npy"


def write_dump(out_dir, features, labels, paths, fingerprint, uncertainty=None):
    """Write the dump; an uncertainty.npy of an earlier dump in out_dir goes when this model predicts none."""
    os.makedirs(out_dir, exist_ok=True)
    save_npy(os.path.join(out_dir, FEATURES), features.astype("float32"))
    save_npy(os.path.join(out_dir, LABELS), labels.astype("int64"))
    write_text(os.path.join(out_dir, PATHS), "".join(path + "\n" for path in paths))
    write_text(os.path.join(out_dir, FINGERPRINT),
               json.dumps({"fingerprint": fingerprint, "embedding_size": int(features.shape[1])}))
    uncertainty_path = os.path.join(out_dir, UNCERTAINTY)
    if uncertainty is not None:
        save_npy(uncertainty_path, uncertainty.astype("float32"))
    elif os.path.lexists(uncertainty_path):
        os.remove(uncertainty_path)
    written = "" if uncertainty is None else f", {UNCERTAINTY}"
    print(f"Wrote {len(paths)} features of {features.shape[1]} dims to {out_dir}/"
          f"{FEATURES}, {LABELS}, {PATHS}, {FINGERPRINT}{written}", flush=True)


def dump_fingerprint(dump_dir):
    """The fingerprint of the model that embedded a dump (fingerprint.json)."""
    try:
        with open(os.path.join(dump_dir, FINGERPRINT)) as f:
            return json.load(f).get("fingerprint")
    except (OSError, ValueError, AttributeError) as err:
        raise UserError(f"{dump_dir} is not a complete infer.py dump: cannot read its {FINGERPRINT}: {err}") from None


def read_dump(dump_dir, data_dir, fingerprint, dim):
    """(features, paths, labels, data_dir, sigma^2 or None) of a dump, checked against the model that will use
    it (its fingerprint, and its embedding size unless dim is None: a model without an embedding layer records
    none, and its fingerprint pins its width); data_dir "" becomes the folder common to the paths."""
    try:
        features = np.load(os.path.join(dump_dir, FEATURES))
        labels = np.load(os.path.join(dump_dir, LABELS)).tolist()
        with open(os.path.join(dump_dir, PATHS), encoding="utf-8") as f:
            paths = f.read().splitlines()
    except (OSError, ValueError) as err:
        raise UserError(f"{dump_dir} is not a complete infer.py dump ({FEATURES}, {LABELS}, {PATHS}, "
                        f"{FINGERPRINT}): {err}") from None
    embedded_by = dump_fingerprint(dump_dir)
    if features.ndim != 2 or not len(features) == len(labels) == len(paths):
        raise UserError(f"{dump_dir}: {FEATURES} {features.shape}, {len(labels)} labels and {len(paths)} paths "
                        f"do not match")
    dump_dim = features.shape[1]
    if (dim is not None and dump_dim != dim) or embedded_by != fingerprint:
        width = "" if dim is None else f" ({dim}-d)"
        raise UserError(f"{dump_dir} was embedded by model fingerprint {embedded_by} ({dump_dim}-d), the "
                        f"index's model is {fingerprint}{width}: another model, embedding size or "
                        f"preprocessing; embed the gallery with the index's model")
    if not data_dir:
        data_dir = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    sigma2_path = os.path.join(dump_dir, UNCERTAINTY)
    sigma2 = np.load(sigma2_path) if os.path.exists(sigma2_path) else None
    if sigma2 is not None and sigma2.shape != (len(paths),):
        raise UserError(f"{sigma2_path} holds {sigma2.shape} values for {len(paths)} images")
    return features, paths, labels, data_dir, sigma2
