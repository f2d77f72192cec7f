"""The chapters as files: paired, executed cleanly, showing the package's own code, starting alike."""

from __future__ import annotations

import importlib
import inspect
import re
import textwrap
from pathlib import Path

import jupytext
import nbformat
import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
PACKAGE_CODE = re.compile(r"^# Package code: (?P<module>tpconv_lite(?:\.\w+)*)\.(?P<name>\w+)\s*$")


def _cells(path: Path) -> list[tuple[str, str]]:
    """(cell_type, source) of every cell, from either member of a pair."""
    notebook = jupytext.read(path) if path.suffix == ".py" else nbformat.read(path, as_version=4)
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_there_are_chapters() -> None:
    assert NOTEBOOKS, f"no chapter notebooks found in {TUTORIALS}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_has_identical_cells(notebook: Path) -> None:
    script = notebook.with_suffix(".py")
    assert script.exists(), f"{notebook.name} has no paired {script.name} (jupytext py:percent)"
    from_notebook, from_script = _cells(notebook), _cells(script)
    for i, (a, b) in enumerate(zip(from_notebook, from_script)):
        assert a == b, f"cell {i} differs between {notebook.name} and {script.name}: run `make execute`"
    assert len(from_notebook) == len(from_script), f"{notebook.name} and {script.name} differ in their cell count"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_was_executed_top_to_bottom(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{notebook.name}: execution counts {counts} are not 1..{len(code)}: re-run it with `make execute`"
    )
    for cell in code:
        for output in cell.outputs:
            assert output.output_type != "error", f"{notebook.name}: a cell raised {output.get('ename')}"
    assert sum(len(cell.outputs) for cell in code) > 0, f"{notebook.name} has no outputs at all"
    checked = [cell for cell in code if "# NBVAL_CHECK_OUTPUT" in cell.source]
    assert checked, f"{notebook.name} has no NBVAL_CHECK_OUTPUT cell"
    for cell in checked:
        assert cell.outputs, f"{notebook.name}: a NBVAL_CHECK_OUTPUT cell has no output to check:\n{cell.source[:200]}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_package_code_cells_match_the_package(notebook: Path) -> None:
    """A cell that starts with `# Package code: tpconv_lite.module.name` shows exactly the package's code."""
    for cell_type, source in _cells(notebook):
        first, _, body = source.partition("\n")
        match = PACKAGE_CODE.match(first) if cell_type == "code" else None
        if match:
            obj = getattr(importlib.import_module(match["module"]), match["name"])
            expected = textwrap.dedent(inspect.getsource(obj)).strip()
            assert body.strip() == expected, f"{notebook.name}: the cell for {first[16:]} differs from the package"


def test_every_chapter_starts_with_the_same_colab_cell() -> None:
    first_code = {}
    for notebook in NOTEBOOKS:
        code = [cell for cell in nbformat.read(notebook, as_version=4).cells if cell.cell_type == "code"]
        first_code[notebook.name] = code[0].source.strip()
        tags = code[0].metadata.get("tags", [])
        assert "hide-cell" in tags, f"{notebook.name}: the Colab cell must carry the tag hide-cell (collapsed in the book)"
    reference = first_code[NOTEBOOKS[0].name]
    assert reference.startswith("# NBVAL_SKIP") and '"google.colab" in sys.modules' in reference
    assert "pip(\"torch" not in reference and "torch==" not in reference, "the Colab cell must never install torch"
    for name, source in first_code.items():
        assert source == reference, f"{name}: its first code cell is not the book's Colab install cell"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_has_the_book_anatomy(notebook: Path) -> None:
    """Goals, a summary, exercises with hidden solutions, references: the structure every chapter shares."""
    nb = nbformat.read(notebook, as_version=4)
    markdown = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    assert re.match(r"# \d+\. \S", nb.cells[0].source), f"{notebook.name}: must open with '# N. Title'"
    for heading in ["## Goals", "## Summary", "## Exercises", "## References"]:
        assert f"\n{heading}" in f"\n{markdown}", f"{notebook.name}: no '{heading}' section"
    assert "{footbibliography}" in markdown, f"{notebook.name}: its references need a footbibliography"
    hidden = [cell for cell in nb.cells[1:] if "hide-cell" in cell.metadata.get("tags", [])]
    assert len(hidden) >= 2, f"{notebook.name}: exercises need solutions in cells tagged hide-cell"
