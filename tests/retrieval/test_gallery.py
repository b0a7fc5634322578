"""retrieval.gallery on synthetic embeddings: exact results, add/remove, persistence, crashes, threads."""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from retrieval import gallery as gallery_module
from retrieval.backends import faiss_index
from retrieval.gallery import Gallery
from utility.errors import UserError

DIM = 16


def unit_rows(n, seed):
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def new_gallery(tmp_path, index_type=None, search_params=None, name="gallery"):
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    return Gallery.create(str(tmp_path / name), dim=DIM, fingerprint="f" * 16, model_info={"model": "test"},
                          data_dir=str(data_dir), index_type=index_type, search_params=search_params)


def add_items(gallery, features, first=0):
    paths = [os.path.join(gallery.data_dir, f"c{i % 5}", f"{first + i}.png") for i in range(len(features))]
    return gallery.add(features, paths, [i % 5 for i in range(len(features))])


def brute_force(gallery_features, gallery_ids, queries, k):
    sims = queries @ gallery_features.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.asarray(gallery_ids)[order], np.take_along_axis(sims, order, 1)


def found(results):
    return [[m.id for m in row] for row in results], [[m.similarity for m in row] for row in results]


def test_flat_results_equal_numpy_brute_force(tmp_path):
    gallery = new_gallery(tmp_path)
    features, queries = unit_rows(300, 0), unit_rows(7, 1)
    ids = add_items(gallery, features)
    assert ids == list(range(300)) and gallery.stats()["index_type"] == "Flat"
    got_ids, got_sims = found(gallery.search(queries, 10))
    want_ids, want_sims = brute_force(features, ids, queries, 10)
    assert got_ids == want_ids.tolist()
    np.testing.assert_allclose(got_sims, want_sims, atol=1e-5)
    first = gallery.search(queries[:1], 3)[0][0]
    assert first.rank == 1 and first.path == os.path.join(f"c{first.id % 5}", f"{first.id}.png")
    assert first.label == first.id % 5 and first.metadata is None


def test_queries_and_items_are_normalised_and_checked(tmp_path):
    gallery = new_gallery(tmp_path)
    features = unit_rows(20, 0)
    add_items(gallery, features * 3.0)
    assert gallery.search(features[:1] * 7.0, 1)[0][0].similarity == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(UserError, match="gallery holds 16-d"):
        gallery.search(np.zeros((1, 8), np.float32), 1)
    with pytest.raises(UserError, match="not finite"):
        gallery.add(np.full((1, DIM), np.nan, np.float32), ["a.png"], [0])
    with pytest.raises(UserError, match="one path, label and metadata"):
        gallery.add(features[:2], ["a.png"], [0, 1])


def test_threshold_drops_weak_matches_and_answers_no_match(tmp_path):
    gallery = new_gallery(tmp_path)
    features = unit_rows(50, 0)
    add_items(gallery, features)
    sims = [m.similarity for m in gallery.search(features[:1], 50)[0]]
    threshold = (sims[2] + sims[3]) / 2
    assert [m.similarity for m in gallery.search(features[:1], 10, threshold=threshold)[0]] == sims[:3]
    assert gallery.search(-features[:1], 10, threshold=0.999) == [[]]


def test_changes_persist_and_reload(tmp_path):
    gallery = new_gallery(tmp_path)
    features = unit_rows(40, 0)
    add_items(gallery, features[:30])
    upload = os.path.join(gallery.uploads_dir, "u.png")
    new_ids = gallery.add(features[30:31], [upload], ["a cat"], metadata=[{"note": "from the page"}])
    assert new_ids == [30]
    assert gallery.remove([3, 7, 999]) == 2
    reopened = Gallery.open(gallery.index_dir)
    assert len(reopened) == 29 and reopened.ids() == gallery.ids()
    assert reopened.item(3) is None and reopened.item(30).label == "a cat"
    assert reopened.item(30).metadata == {"note": "from the page"} and reopened.item(30).path == upload
    assert reopened.image_path(30) == os.path.realpath(upload)
    assert reopened.image_path(4) == os.path.realpath(os.path.join(reopened.data_dir, "c4", "4.png"))
    assert found(reopened.search(features[:5], 5)) == found(gallery.search(features[:5], 5))
    assert reopened.add(features[31:32], [upload], [1]) == [31]  # ids are never reused
    assert reopened.stats()["items"] == 30 and reopened.stats()["fingerprint"] == "f" * 16
    assert os.listdir(os.path.join(gallery.index_dir, "versions")) == [f"{reopened.stats()['version']:08d}"]


def test_image_path_refuses_files_outside_the_data_and_uploads_folders(tmp_path):
    gallery = new_gallery(tmp_path)
    outside = str(tmp_path / "elsewhere.png")
    escaping = os.path.join(gallery.data_dir, "..", "elsewhere.png")
    ids = gallery.add(unit_rows(2, 0), [outside, escaping], [0, 0])
    assert [gallery.image_path(i) for i in ids] == [None, None]
    assert gallery.item(ids[0]).path == outside and gallery.image_path(12345) is None


@pytest.mark.parametrize("index_type, search_params", [("IVF4,Flat", "nprobe=4"), ("SQ8", "")])
def test_index_types_that_remove_vectors(tmp_path, index_type, search_params):
    gallery = new_gallery(tmp_path, index_type, search_params)
    features = unit_rows(400, 0)
    ids = add_items(gallery, features)
    gallery.remove(ids[::2])
    state_index = gallery._state.index
    assert state_index.removes_vectors and state_index.count == 200 and not state_index.tombstones
    got_ids, _ = found(gallery.search(features[:20], 10))
    assert all(i % 2 == 1 for row in got_ids for i in row) and all(len(row) == 10 for row in got_ids)
    if index_type.endswith("Flat"):  # every list probed: exact
        assert got_ids == brute_force(features[1::2], ids[1::2], features[:20], 10)[0].tolist()


def test_hnsw_removal_by_tombstones_then_rebuild(tmp_path, monkeypatch):
    gallery = new_gallery(tmp_path, "HNSW16", "efSearch=400")
    features, queries = unit_rows(300, 0), unit_rows(10, 1)
    ids = add_items(gallery, features)
    removed = [int(i) for i in brute_force(features, ids, queries, 3)[0].ravel()]  # the queries' best matches
    gallery.remove(removed[:20])
    index = gallery._state.index
    assert not index.removes_vectors and index.count == 300 and len(index.tombstones) == len(set(removed[:20]))
    live = sorted(set(ids) - set(removed[:20]))
    got_ids, _ = found(gallery.search(queries, 10))
    assert got_ids == brute_force(features[live], live, queries, 10)[0].tolist()
    assert found(Gallery.open(gallery.index_dir).search(queries, 10))[0] == got_ids  # tombstones persist

    more = sorted(set(ids[:40]) - set(removed[:20]))  # past REBUILD_FRACTION of 300: rebuilt
    gallery.remove(more)
    index = gallery._state.index
    live = sorted(set(live) - set(more))
    assert index.count == len(live) and not index.tombstones
    assert found(gallery.search(queries, 10))[0] == brute_force(features[live], live, queries, 10)[0].tolist()


def test_default_index_type_by_size():
    assert faiss_index.default_index_type(100_000) == ("Flat", "")
    index_type, params = faiss_index.default_index_type(1_000_000)
    assert (index_type, params) == ("IVF4096,SQ8", "nprobe=64")
    assert faiss_index.default_search_params("HNSW32") == "efSearch=64"


def test_bad_index_type_and_too_small_ivf_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="not a faiss index_factory string"):
        new_gallery(tmp_path, "NoSuchIndex")
    gallery = new_gallery(tmp_path, "IVF64,Flat", name="ivf")
    with pytest.raises(UserError, match="needs at least that many items"):
        add_items(gallery, unit_rows(10, 0))


@pytest.mark.parametrize("crash_in", ["_sync_folder_files", "_write_json_atomically"])
def test_a_crash_during_a_write_leaves_the_previous_version_whole(tmp_path, monkeypatch, crash_in):
    gallery = new_gallery(tmp_path)
    features = unit_rows(30, 0)
    add_items(gallery, features[:20])
    before = found(gallery.search(features[:3], 5))

    def crash(*args, **kwargs):
        raise OSError("disk on fire")

    with monkeypatch.context() as patch:
        patch.setattr(gallery_module, crash_in, crash)
        with pytest.raises(OSError):
            add_items(gallery, features[20:], first=20)
    reopened = Gallery.open(gallery.index_dir)
    assert len(reopened) == 20 and found(reopened.search(features[:3], 5)) == before
    assert reopened.add(features[20:21], ["x.png"], [0]) == [20]  # and the next write cleans up
    assert os.listdir(os.path.join(gallery.index_dir, "versions")) == [f"{reopened.stats()['version']:08d}"]


def test_two_processes_writing_one_folder_keep_each_others_changes(tmp_path):
    first = new_gallery(tmp_path)
    features = unit_rows(10, 0)
    add_items(first, features[:4])
    second = Gallery.open(first.index_dir)
    add_items(first, features[4:6])
    assert second.add(features[6:7], ["x.png"], [0]) == [6]  # reloads the version first wrote
    assert Gallery.open(first.index_dir).ids() == list(range(7))


def test_searches_during_changes_see_whole_versions(tmp_path):
    gallery = new_gallery(tmp_path)
    features = unit_rows(200, 0)
    add_items(gallery, features[:100])
    errors, stop = [], threading.Event()

    def search_until_stopped():
        while not stop.is_set():
            try:
                for row in gallery.search(features[:8], 20):
                    assert len(row) == 20 and len({m.id for m in row}) == 20
            except Exception as err:  # noqa: BLE001 - any failure in a thread is collected and asserted below
                errors.append(err)
                return

    threads = [threading.Thread(target=search_until_stopped) for _ in range(3)]
    for thread in threads:
        thread.start()
    for start in range(100, 200, 10):
        add_items(gallery, features[start:start + 10], first=start)
        gallery.remove(list(range(start - 100, start - 95)))
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == [] and len(gallery) == 150


def test_damaged_or_foreign_folders_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="index folder not found"):
        Gallery.open(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="gallery.json missing"):
        Gallery.open(str(tmp_path / "empty"))
    gallery = new_gallery(tmp_path)
    settings_path = os.path.join(gallery.index_dir, "gallery.json")
    with open(settings_path) as f:
        settings = json.load(f)
    with open(settings_path, "w") as f:
        json.dump(dict(settings, format_version=99), f)
    with pytest.raises(UserError, match="format 99"):
        Gallery.open(gallery.index_dir)
    with open(settings_path, "w") as f:
        json.dump(settings, f)
    os.remove(os.path.join(gallery.index_dir, "versions", f"{settings['version']:08d}", "items.jsonl"))
    with pytest.raises(UserError, match="damaged"):
        Gallery.open(gallery.index_dir)


def test_check_model_names_both_fingerprints_and_sizes(tmp_path):
    gallery = new_gallery(tmp_path)
    with pytest.raises(UserError, match="32-d embeddings.*holds 16-d"):
        gallery.check_model("f" * 16, 32, "dump")
    with pytest.raises(UserError, match=r"fingerprint 0123456789abcdef, .* by f{16}"):
        gallery.check_model("0123456789abcdef", 16, "dump")
    gallery.check_model("f" * 16, 16, "dump")


KILLED_WRITER = """
import os, signal, sys
import numpy as np
from retrieval import gallery as gallery_module
from retrieval.gallery import Gallery

original, calls = getattr(gallery_module, sys.argv[2]), []

def die_on_call_n(*args, **kwargs):  # the n-th call of the function named on the command line is killed
    calls.append(1)
    if len(calls) == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)

setattr(gallery_module, sys.argv[2], die_on_call_n)
gallery = Gallery.open(sys.argv[1])
gallery.add(np.eye(16, dtype=np.float32)[:3], ["a.png", "b.png", "c.png"], [0, 0, 0])
"""


@pytest.mark.parametrize("killed_in, call", [("_remove_leftovers", 1), ("_sync_folder_files", 1),
                                             ("_write_json_atomically", 1), ("_remove_leftovers", 2)])
def test_a_writer_killed_mid_write_leaves_a_whole_version(tmp_path, killed_in, call):
    """A real SIGKILL at four points of a write: before it, with the version half written, before and after
    the switch of gallery.json."""
    gallery = new_gallery(tmp_path)
    features = unit_rows(10, 0)
    add_items(gallery, features)
    before = found(gallery.search(features[:3], 4))
    repository = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, gallery.index_dir, killed_in, str(call)],
                            check=False, cwd=repository)
    assert result.returncode == -9
    reopened = Gallery.open(gallery.index_dir)
    if call == 2:  # killed after the switch to the new version, before the old one was deleted
        assert len(reopened) == 13 and reopened.item(12).path.endswith("c.png")
    else:
        assert len(reopened) == 10 and found(reopened.search(features[:3], 4)) == before
    next_id = len(reopened)
    assert reopened.add(features[:1], ["x.png"], [0]) == [next_id]  # and writes go on
    assert os.listdir(os.path.join(gallery.index_dir, "versions")) == [f"{reopened.stats()['version']:08d}"]


def alpha_qe_reference(gallery_features, queries, k, alpha):
    """alpha-QE written out (evaluation/postprocess.py's definition): q + sum of its k best w_i d_i,
    w_i = max(0, q.d_i) ** alpha, normalised."""
    expanded = []
    for query in queries:
        sims = gallery_features @ query
        best = np.argsort(-sims, kind="stable")[:k]
        weights = np.maximum(sims[best], 0) ** alpha
        vector = query + weights @ gallery_features[best]
        expanded.append(vector / np.linalg.norm(vector))
    return np.array(expanded)


@pytest.mark.parametrize("index_type,search_params", [("Flat", ""), ("IVF4,Flat", "nprobe=4")])
def test_query_expansion_searches_with_the_expanded_query(tmp_path, index_type, search_params):
    from evaluation.postprocess import Expansion

    gallery = new_gallery(tmp_path, index_type=index_type, search_params=search_params)
    features, queries = unit_rows(60, 0), unit_rows(5, 1)
    add_items(gallery, features)
    gallery.remove([3, 40])  # removed items neither expand nor match (IVF: its id -> vector map follows)
    live = np.array([i for i in range(60) if i not in (3, 40)])
    expanded = alpha_qe_reference(features[live], queries, 4, 3.0)
    want_ids, want_sims = brute_force(features[live], live, expanded, 6)
    got_ids, got_sims = found(gallery.search(queries, 6, query_expansion=Expansion(4, 3.0)))
    assert got_ids == want_ids.tolist()
    np.testing.assert_allclose(got_sims, want_sims, atol=1e-5)
    plain_ids, _ = found(gallery.search(queries, 6))
    assert plain_ids != got_ids  # the expansion changed some ranking: the test can tell it was applied


def test_sigma2_is_kept_per_item_and_an_index_without_it_reads_as_before(tmp_path):
    with_sigma2 = new_gallery(tmp_path, name="uncertain")
    features = unit_rows(4, 0)
    paths = [os.path.join(with_sigma2.data_dir, f"{i}.png") for i in range(4)]
    with_sigma2.add(features, paths, [0, 0, 1, 1], sigma2=np.array([0.5, 1.25, 2.0, 0.75], np.float32))
    reopened = Gallery.open(with_sigma2.index_dir)
    assert reopened.search(features[2:3], 1)[0][0].sigma2 == 2.0
    assert reopened.item(1).sigma2 == 1.25
    plain = new_gallery(tmp_path, name="plain")
    plain.add(features, paths, [0, 0, 1, 1])
    version = plain.settings["version"]
    table = os.path.join(plain.index_dir, "versions", f"{version:08d}", "items.jsonl")
    with open(table) as f:
        records = [json.loads(line) for line in f]
    assert set(records[0]) == {"id", "path", "label", "metadata"}  # the table of indexes written before sigma^2
    assert {m.sigma2 for m in Gallery.open(plain.index_dir).search(features, 4)[0]} == {None}


def full_pool_re_ranking(gallery_features, gallery_ids, query):
    """gallery_ids in the order of eval.py's k-reciprocal re-ranking (evaluation.postprocess) over {query, gallery}."""
    from evaluation.postprocess import PostProcessing, ranked_blocks

    _, order, _ = next(ranked_blocks(query[None], gallery_features, wanted=np.array([len(gallery_features)]),
                                     leave_one_out=False, feat_norm=True,
                                     post_processing=PostProcessing(re_ranking=True)))
    return np.asarray(gallery_ids)[order[0]].tolist()


@pytest.mark.parametrize("index_type,search_params", [("Flat", ""), ("HNSW16", "efSearch=64")])
def test_re_ranking_a_shortlist_holding_the_whole_gallery_equals_the_full_pool_re_ranking(tmp_path, index_type,
                                                                                         search_params):
    from retrieval.gallery import ReRanking

    gallery = new_gallery(tmp_path, index_type=index_type, search_params=search_params)
    features, queries = unit_rows(60, 0), unit_rows(5, 1)
    add_items(gallery, features)
    gallery.remove([3, 40])  # removed items are no candidates (HNSW: tombstones)
    live = np.array([i for i in range(60) if i not in (3, 40)])
    results = gallery.search(queries, 58, re_ranking=ReRanking(100))
    for query, matches in zip(queries, results):
        assert [m.id for m in matches] == full_pool_re_ranking(features[live], live, query)
        assert [m.rank for m in matches] == list(range(1, 59))
        np.testing.assert_allclose([m.similarity for m in matches], features[[m.id for m in matches]] @ query,
                                   atol=1e-5)  # the reported score stays the cosine
    assert found(gallery.search(queries, 10))[0] != [[m.id for m in row[:10]] for row in results]  # it re-ranked


def test_a_shortlist_smaller_than_the_gallery_reorders_the_shortlist_only(tmp_path):
    from retrieval.gallery import ReRanking

    gallery = new_gallery(tmp_path)
    features, queries = unit_rows(300, 0), unit_rows(4, 1)
    add_items(gallery, features)
    plain_ids, _ = found(gallery.search(queries, 30))
    reranked = gallery.search(queries, 10, re_ranking=ReRanking(30))
    for query, shortlist, matches in zip(queries, plain_ids, reranked):
        assert {m.id for m in matches} < set(shortlist)
        assert [m.id for m in matches] == full_pool_re_ranking(features[shortlist], shortlist, query)[:10]
    assert [{m.id for m in row} for row in gallery.search(queries, 40, re_ranking=ReRanking(30))] \
        == [set(row) for row in found(gallery.search(queries, 40))[0]]  # top_k beyond the shortlist: top_k taken


def test_with_re_ranking_the_threshold_drops_by_similarity_and_keeps_the_re_ranked_order(tmp_path):
    from retrieval.gallery import ReRanking

    gallery = new_gallery(tmp_path)
    features = unit_rows(80, 0)
    add_items(gallery, features)
    query = features[:1] + 0.3 * unit_rows(1, 5)
    every = gallery.search(query, 25, re_ranking=ReRanking(25))[0]
    threshold = float(np.median([m.similarity for m in every]))
    kept = gallery.search(query, 5, threshold=threshold, re_ranking=ReRanking(25))[0]
    assert [m.id for m in kept] == [m.id for m in every if m.similarity >= threshold][:5]
    assert [m.rank for m in kept] == [1, 2, 3, 4, 5]
    assert [m.id for m in kept] != sorted([m.id for m in kept], key=lambda i: -float(features[i] @ query[0]))
    assert gallery.search(-features[:1], 5, threshold=0.999, re_ranking=ReRanking()) == [[]]  # no match stays


def test_re_ranking_settings_and_its_refusals(tmp_path):
    from evaluation.postprocess import Expansion
    from retrieval.gallery import DEFAULT_SHORTLIST, ReRanking

    assert ReRanking.parse("true") == ReRanking() == ReRanking(DEFAULT_SHORTLIST)
    assert ReRanking.parse(" 250 ") == ReRanking(250) and ReRanking.parse("false") is None
    for bad, message in (("20", "at least 21"), ("maybe", "true, false or a shortlist size")):
        with pytest.raises(UserError, match=message):
            ReRanking.parse(bad)
    gallery = new_gallery(tmp_path)
    add_items(gallery, unit_rows(30, 0))
    with pytest.raises(UserError, match="give it or query expansion, not both"):
        gallery.search(unit_rows(1, 1), 3, query_expansion=Expansion(2, 1.0), re_ranking=ReRanking())
