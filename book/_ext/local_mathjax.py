"""Serve MathJax 3 from the book itself, so that pages render their math offline.

The files come from the PyPI package ``django-static-mathjax`` (MathJax 3.2.2, no Django needed at run time),
installed with the ``book`` extra. Only the parts that ``tex-mml-chtml.js`` loads are copied (about 4 MB).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mathjax
from sphinx.application import Sphinx

SOURCE = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
PARTS = ["tex-mml-chtml.js", "input", "output/chtml", "a11y", "ui", "adaptors"]


def _copy(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / "mathjax"
    for part in PARTS:
        source = SOURCE / part
        if source.is_dir():
            shutil.copytree(source, target / part, dirs_exist_ok=True)
        else:
            (target / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / part)


def setup(app: Sphinx) -> dict:
    app.config.mathjax_path = "mathjax/tex-mml-chtml.js"  # relative paths resolve inside _static
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
