"""docs/losses.md holds the loss table that losses/table.py generates from the specs."""
from pathlib import Path

import pytest

import losses
from losses.table import BEGIN, END, markdown_table, replace_table, table_in

DOCS = Path(__file__).resolve().parents[2] / "docs" / "losses.md"


def test_the_docs_hold_the_generated_table():
    assert table_in(DOCS.read_text(encoding="utf-8")) == markdown_table(losses.LOSSES.values()), \
        "docs/losses.md is out of date: run python -m losses.table --update docs/losses.md"


def test_the_table_shows_every_loss_with_its_settings():
    table = markdown_table(losses.LOSSES.values())
    rows = table.splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| `{name}`" for name in losses.LOSSES]
    assert "`--ms_lambda` (`base`) = 0.5" in table and "`--arc_easy_margin` (`easy_margin`) = False" in table
    assert "P classes × 2 images" in rows[list(losses.LOSSES).index("npairsloss")]


def test_replace_table_keeps_the_rest_of_the_page():
    page = f"intro\n{BEGIN}\nold\n{END}\nafter\n"
    assert replace_table(page, "new") == f"intro\n{BEGIN}\nnew\n{END}\nafter\n"
    assert table_in(replace_table(page, "new")) == "new"
    with pytest.raises(ValueError, match="markers"):
        replace_table("no markers", "new")
