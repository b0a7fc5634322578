"""A small real gallery index for the service tests, built once per test session.

`index.py build --pretrained_model` of tests/retrieval/conftest.py's tiny_checkpoint (ResNet18, 32x32, 16-d)
over images 0-4 of each of the 8 classes it was trained on; image 5 of each class is left out as a query.
"""
import os

import numpy as np

_BUILT = {}


def served_index(tmp_path_factory, tiny_dataset, tiny_checkpoint):
    """The session's index, built on first call: {"index_dir", "data_dir", "gallery_list", "query_list",
    "queries": [(absolute path, label)], "work_dir"}."""
    if "index" not in _BUILT:
        _BUILT["index"] = _build(tmp_path_factory, tiny_dataset, tiny_checkpoint["checkpoint"])
    return _BUILT["index"]


def _build(tmp_path_factory, tiny_dataset, checkpoint):
    import index

    data_dir, train_list, _ = tiny_dataset
    out = tmp_path_factory.mktemp("served")
    with open(train_list) as f:
        lines = f.readlines()
    gallery_list, query_list = out / "gallery.txt", out / "queries.txt"
    gallery_list.write_text("".join(line for line in lines if "/5.png " not in line))
    query_list.write_text("".join(line for line in lines if "/5.png " in line))
    index_dir = str(out / "index")
    index.main(["build", f"--pretrained_model={checkpoint}", f"--gallery_list={gallery_list}",
                f"--data_dir={data_dir}", f"--index_dir={index_dir}", "--num_workers=0"])
    import paddle

    paddle.disable_static()
    queries = [(os.path.join(data_dir, path), int(label))
               for path, label in map(str.split, query_list.read_text().splitlines())]
    return {"index_dir": index_dir, "data_dir": data_dir, "gallery_list": str(gallery_list),
            "query_list": str(query_list), "queries": queries, "work_dir": out}


def exact_top_k(served, top_k):
    """Per query of served["queries"]: (item ids, similarities) of its top_k by numpy brute force over the
    embeddings infer.py dumps with the index's own model (the reference every search path must equal)."""
    from retrieval.gallery import Gallery

    if ("exact", top_k) not in _BUILT:
        gallery_features, gallery_paths = _infer_dump(served, "gallery_list")
        query_features, _ = _infer_dump(served, "query_list")
        gallery = Gallery.open(served["index_dir"])
        id_of_path = {os.path.realpath(gallery.image_path(i)): i for i in gallery.ids()}
        ids = np.array([id_of_path[os.path.realpath(path)] for path in gallery_paths])
        similarities = _unit(query_features) @ _unit(gallery_features).T
        order = np.argsort(-similarities, axis=1, kind="stable")[:, :top_k]
        _BUILT[("exact", top_k)] = [(ids[row].tolist(), similarities[q, row].tolist())
                                    for q, row in enumerate(order)]
    return _BUILT[("exact", top_k)]


def _infer_dump(served, list_name):
    import infer
    from retrieval.gallery import Gallery

    out = served["work_dir"] / f"dump-{list_name}"
    model_dir = Gallery.open(served["index_dir"]).model_dir
    infer.main([f"--inference_model={model_dir}", f"--data_dir={served['data_dir']}",
                f"--infer_list={served[list_name]}", "--num_workers=0", f"--output_dir={out}"])
    import paddle

    paddle.disable_static()
    return np.load(out / "features.npy"), (out / "paths.txt").read_text().splitlines()


def _unit(features):
    return features / np.linalg.norm(features, axis=1, keepdims=True)
