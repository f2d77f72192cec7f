"""Run a chapter's Colab install cell as Colab runs it, for `make colab-check`.

Usage: ``python tests/colab_cell.py tutorials/01_irreps.ipynb`` with the interpreter of the venv that plays Colab,
and ``TPCONV_LITE_SOURCE`` set to the checkout to install (``file:///path/to/clone``). The cell is the notebook's
first code cell, taken as committed; ``google.colab`` is made importable so that its Colab branch runs. Only the
standard library is used: the venv holds what Colab preinstalls, and the cell must bring the rest.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path


def colab_cell(notebook: Path) -> str:
    """The source of ``notebook``'s first code cell, checked to be the Colab install cell."""
    cells = json.loads(notebook.read_text())["cells"]  # plain json: Colab's venv here has no nbformat
    code = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    if not code or '"google.colab" in sys.modules' not in code[0]:
        raise ValueError(f"{notebook}: its first code cell is not the Colab install cell")
    return code[0]


def main(notebook: str) -> None:
    if not os.environ.get("TPCONV_LITE_SOURCE"):
        raise SystemExit("set TPCONV_LITE_SOURCE to the checkout to install, e.g. file:///path/to/clone")
    source = colab_cell(Path(notebook))
    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")
    sys.modules.update({"google": google, "google.colab": google.colab})
    exec(compile(source, f"{notebook}, Colab cell", "exec"), {"__name__": "__main__"})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
