"""evaluation.visualize: layout and frame colours of the retrieval picture."""
from PIL import Image

from evaluation.visualize import (BORDER, MARGIN, MATCH_COLOR, MISMATCH_COLOR, QUERY_COLOR, QUERY_GAP,
                               TEXT_HEIGHT, cell_left, draw_retrieval)

THUMB = 40


def solid_image(tmp_path, name, color, size=(32, 24)):
    path = tmp_path / name
    Image.new("RGB", size, color).save(path)
    return str(path)


def test_frames_show_query_matches_and_mismatches(tmp_path):
    query_image = solid_image(tmp_path, "q.png", (255, 255, 0))
    paths = [solid_image(tmp_path, f"g{i}.png", (0, 0, 40 * i)) for i in range(4)]
    out = tmp_path / "retrieval.png"
    size = draw_retrieval(
        query_paths=[query_image, paths[0]],
        query_labels=[7, 3],
        neighbor_paths=[[paths[1], paths[2], str(tmp_path / "missing.png")], [paths[3], paths[1], paths[2]]],
        neighbor_labels=[[7, 5, 7], [4, 4, 3]],
        out_png=str(out),
        thumb=THUMB,
    )
    picture = Image.open(out).convert("RGB")
    cell = THUMB + 2 * BORDER
    assert picture.size == size == (2 * MARGIN + QUERY_GAP + 4 * cell + 3 * MARGIN,
                                     MARGIN + 2 * (cell + TEXT_HEIGHT + MARGIN))
    expected_frames = [[QUERY_COLOR, MATCH_COLOR, MISMATCH_COLOR, MATCH_COLOR],
                       [QUERY_COLOR, MISMATCH_COLOR, MISMATCH_COLOR, MATCH_COLOR]]
    for row, colors in enumerate(expected_frames):
        top = MARGIN + row * (cell + TEXT_HEIGHT + MARGIN)
        for column, color in enumerate(colors):
            left = cell_left(column, THUMB)
            assert picture.getpixel((left + 1, top + 1)) == color  # top-left corner of the frame
            assert picture.getpixel((left + cell - 2, top + cell // 2)) == color  # right edge
    # The 32x24 image is scaled up to 40x30 and centred: the middle shows its colour.
    first_top = MARGIN
    assert picture.getpixel((MARGIN + cell // 2, first_top + cell // 2)) == (255, 255, 0)
    assert picture.getpixel((cell_left(2, THUMB) + cell // 2, first_top + cell // 2)) == (0, 0, 80)
    # Letterbox above the wide image stays white.
    assert picture.getpixel((MARGIN + cell // 2, first_top + BORDER + 1)) == (255, 255, 255)
    # An unreadable image is a grey placeholder, not an error.
    assert picture.getpixel((cell_left(3, THUMB) + BORDER + 1, first_top + BORDER + 1)) == (200, 200, 200)


def test_rows_may_have_different_lengths(tmp_path):
    image = solid_image(tmp_path, "a.png", (10, 20, 30))
    size = draw_retrieval([image, image], ["a", "b"], [[image], []], [["a"], []], str(tmp_path / "r.png"), thumb=20)
    assert size == Image.open(tmp_path / "r.png").size


def test_a_query_of_unknown_label_leaves_its_neighbours_unjudged(tmp_path):
    from evaluation.visualize import UNJUDGED_COLOR

    paths = [solid_image(tmp_path, f"g{i}.png", (0, 0, 40 * i)) for i in range(3)]
    out = tmp_path / "retrieval.png"
    draw_retrieval([paths[0]], [None], [[paths[1], paths[2]]], [[7, 5]], str(out), thumb=THUMB)
    picture = Image.open(out).convert("RGB")
    for column, color in enumerate([QUERY_COLOR, UNJUDGED_COLOR, UNJUDGED_COLOR]):
        assert picture.getpixel((cell_left(column, THUMB) + 1, MARGIN + 1)) == color
