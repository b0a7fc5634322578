"""cli/retrieval_args.py: index.py's and search.py's flags and the checks between them."""
import pytest

from cli.retrieval_args import gallery_images, item_ids, parse_index_args, parse_search_args
from retrieval.indexing import GalleryImages
from utility.errors import UserError


def test_build_flags_become_gallery_images_and_infer_flags_pass_after_a_checkpoint():
    args, extra = parse_index_args("", ["build", "--index_dir", "g", "--pretrained_model", "ckpt", "--gallery_list",
                                        "l.txt", "--data_dir", "d", "--num_workers", "0", "--model=ResNet18"])
    assert extra == ["--model=ResNet18"]
    assert gallery_images(args) == GalleryImages(gallery_list="l.txt", data_dir="d", num_workers=0)
    with pytest.raises(UserError, match="unrecognized arguments: --model=ResNet18"):
        parse_index_args("", ["build", "--index_dir", "g", "--model_dir", "m", "--model=ResNet18"])


@pytest.mark.parametrize("argv, message", [
    (["build", "--index_dir", "g", "--gallery_dir", "p"], "build needs the model"),
    (["build", "--index_dir", "g", "--model_dir", "m", "--pretrained_model", "c"], "build needs the model"),
    (["remove", "--index_dir", "g"], "remove needs --ids 3,17 or --list FILE"),
    (["remove", "--index_dir", "g", "--ids", "1", "--list", "l.txt"], "remove needs"),
])
def test_one_model_and_one_way_to_remove(argv, message):
    with pytest.raises(UserError, match=message):
        parse_index_args("", argv)


def test_ids_and_top_k():
    assert item_ids("3, 17,") == [3, 17]
    with pytest.raises(UserError, match="comma-separated integers, not '3;17'"):
        item_ids("3;17")
    assert parse_search_args("", ["--index_dir", "g", "--query", "a.png", "--query", "b.png"]).query == ["a.png",
                                                                                                          "b.png"]
    with pytest.raises(UserError, match="--top_k must be at least 1, not 0"):
        parse_search_args("", ["--index_dir", "g", "--top_k", "0"])


def test_re_ranking_flag_takes_an_optional_shortlist_and_refuses_query_expansion():
    from retrieval.gallery import ReRanking

    def re_ranking(*flags):
        return parse_search_args("", ["--index_dir", "g", "--query", "a.png", *flags]).re_ranking

    assert re_ranking() is None and re_ranking("--re_ranking", "false") is None
    assert re_ranking("--re_ranking") == re_ranking("--re_ranking=true") == ReRanking(100)
    assert re_ranking("--re_ranking", "300", "--top_k", "5") == ReRanking(300)
    with pytest.raises(UserError, match="at least 21 candidates"):
        re_ranking("--re_ranking", "10")
    with pytest.raises(UserError, match="give it or --query_expansion, not both"):
        re_ranking("--re_ranking", "--query_expansion", "3,2")
