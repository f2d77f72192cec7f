"""The book builds offline, with warnings as errors, and its chapters have their Colab buttons."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [chapter["file"] for part in toc["parts"] for chapter in part["chapters"]]


def test_toc_lists_every_chapter_notebook() -> None:
    listed = set(_toc_files())
    for notebook in sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.ipynb")):
        assert f"tutorials/{notebook.stem}" in listed, f"{notebook.name} is not in _toc.yml"


def test_book_builds_without_warnings(tmp_path: Path) -> None:
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--path-output", str(tmp_path), "--warningiserror", "--keep-going"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"book build failed:\n{result.stdout[-5000:]}\n{result.stderr[-3000:]}"
    html = tmp_path / "_build" / "html"
    for page in _toc_files():
        path = html / f"{page}.html"
        assert path.exists(), f"{page} was not rendered"
        if (ROOT / f"{page}.ipynb").exists():
            colab = f"https://colab.research.google.com/github/tpconv-lite/tpconv-lite/blob/main/{page}.ipynb"
            assert colab in path.read_text(), f"{page}: no Colab launch button pointing at {page}.ipynb"
