"""The book builds offline, with warnings as errors, and its chapters have their Colab buttons."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT, toc_files

COLAB = "https://colab.research.google.com/github/tpconv-lite/tpconv-lite/blob/main/{page}.ipynb"


def test_toc_lists_every_chapter_notebook() -> None:
    listed = set(toc_files())
    for notebook in sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.ipynb")):
        assert f"tutorials/{notebook.stem}" in listed, f"{notebook.name} is not in _toc.yml"


def test_book_builds_every_page_with_its_colab_button(built_book: Path) -> None:
    for page in toc_files():
        path = built_book / f"{page}.html"
        assert path.exists(), f"{page} was not rendered"
        if (ROOT / f"{page}.ipynb").exists():
            assert COLAB.format(page=page) in path.read_text(), f"{page}: no Colab button pointing at {page}.ipynb"


def test_math_is_served_by_the_book_itself(built_book: Path) -> None:
    assert (built_book / "_static" / "mathjax" / "tex-mml-chtml.js").exists()
    assert "cdn.jsdelivr.net/npm/mathjax" not in (built_book / "tutorials" / "01_irreps.html").read_text()
