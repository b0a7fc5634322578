"""Pictures of retrieval results: each query beside its nearest gallery images."""
from PIL import Image, ImageDraw, ImageFont, ImageOps

from utility.files import write_atomically

QUERY_COLOR = (60, 100, 200)
MATCH_COLOR = (0, 160, 0)
MISMATCH_COLOR = (210, 0, 0)
UNJUDGED_COLOR = (150, 150, 150)  # the query's label is unknown: a neighbour is neither right nor wrong
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
BORDER = 4  # frame width around each thumbnail
MARGIN = 6  # space between cells and around the picture
QUERY_GAP = 16  # extra space between a query and its results
TEXT_HEIGHT = 14


def draw_retrieval(query_paths, query_labels, neighbor_paths, neighbor_labels, out_png, thumb=96):
    """Write a PNG grid: one row per query, the query then its ranked neighbours.

    Args:
        query_paths: one image path per query.
        query_labels: one label per query; None where it is unknown (a new photo).
        neighbor_paths: per query, the paths of its neighbours, nearest first.
        neighbor_labels: per query, the labels of those neighbours.
        out_png: where the picture goes.
        thumb: side of the square each image is fitted into, in pixels.

    The query is framed blue, a neighbour green when its label is the query's,
    red otherwise, and grey when the query's label is unknown; each label is written under its image (neighbours as
    "#rank, label L"). An image that cannot be read is drawn as a grey square
    marked "unreadable" rather than stopping the evaluation that asked for it.

    Returns:
        (width, height) of the picture.
    """
    if not (len(query_paths) == len(query_labels) == len(neighbor_paths) == len(neighbor_labels)):
        raise ValueError("draw_retrieval needs as many labels and neighbour lists as queries")
    columns = max((len(row) for row in neighbor_paths), default=0)
    cell_width = thumb + 2 * BORDER
    cell_height = cell_width + TEXT_HEIGHT
    width = 2 * MARGIN + QUERY_GAP + (1 + columns) * cell_width + columns * MARGIN
    height = MARGIN + len(query_paths) * (cell_height + MARGIN)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    font = ImageFont.load_default(size=11)
    for row, (path, label) in enumerate(zip(query_paths, query_labels)):
        top = MARGIN + row * (cell_height + MARGIN)
        caption = "query" if label is None else f"query, label {label}"
        _draw_cell(canvas, font, path, caption, QUERY_COLOR, (MARGIN, top), thumb)
        ranked = zip(neighbor_paths[row], neighbor_labels[row])
        for rank, (neighbor_path, neighbor_label) in enumerate(ranked, start=1):
            left = cell_left(rank, thumb)
            color = UNJUDGED_COLOR if label is None else MATCH_COLOR if neighbor_label == label else MISMATCH_COLOR
            _draw_cell(canvas, font, neighbor_path, f"#{rank}, label {neighbor_label}", color, (left, top), thumb)
    write_atomically(out_png, lambda f: canvas.save(f, format="PNG"))
    return canvas.size


def cell_left(column, thumb):
    """x of the left edge of a cell's frame: column 0 is the query, 1.. its neighbours."""
    cell_width = thumb + 2 * BORDER
    if column == 0:
        return MARGIN
    return MARGIN + cell_width + QUERY_GAP + (column - 1) * (cell_width + MARGIN)


def _draw_cell(canvas, font, path, caption, color, origin, thumb):
    left, top = origin
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([left, top, left + thumb + 2 * BORDER - 1, top + thumb + 2 * BORDER - 1], fill=color)
    picture = _thumbnail(path, thumb)
    offset = ((thumb - picture.width) // 2, (thumb - picture.height) // 2)
    draw.rectangle([left + BORDER, top + BORDER, left + BORDER + thumb - 1, top + BORDER + thumb - 1], fill=BACKGROUND)
    canvas.paste(picture, (left + BORDER + offset[0], top + BORDER + offset[1]))
    draw.text((left + BORDER, top + thumb + 2 * BORDER + 1), _fit(draw, font, caption, thumb + 2 * BORDER),
              fill=TEXT_COLOR, font=font)


def _thumbnail(path, thumb):
    """The image scaled (up or down) to fit a thumb x thumb square, aspect ratio kept."""
    try:
        with Image.open(path) as image:
            picture = image.convert("RGB")
    except (OSError, ValueError):
        picture = Image.new("RGB", (thumb, thumb), (200, 200, 200))
        ImageDraw.Draw(picture).text((4, thumb // 2 - 6), "unreadable", fill=TEXT_COLOR)
        return picture
    return ImageOps.contain(picture, (thumb, thumb))


def _fit(draw, font, text, width):
    """The text, shortened with '...' until it fits the width."""
    while len(text) > 1 and draw.textlength(text, font=font) > width:
        text = text[:-4] + "..." if len(text) > 4 else text[:-1]
    return text
