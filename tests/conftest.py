"""Shared fixtures: the book is built once per test session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

# The stand-ins that `make test-torch` puts on PYTHONPATH to hide torch_cluster/torch_scatter raise on import: they are
# not test modules, and `--doctest-modules` must not import them (on a machine without the real packages it would).
collect_ignore = ["without_pyg"]


def toc_files() -> list[str]:
    """The pages of _toc.yml, root first, as paths without suffix (``tutorials/01_irreps``)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"]] + [chapter["file"] for part in toc["parts"] for chapter in part["chapters"]]


@pytest.fixture(scope="session")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the book offline with warnings as errors; return its ``_build/html`` folder."""
    out = tmp_path_factory.mktemp("book")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--path-output", str(out), "--warningiserror", "--keep-going"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        pytest.fail(f"book build failed:\n{result.stdout[-5000:]}\n{result.stderr[-3000:]}")
    return out / "_build" / "html"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The unit tests' tensors are tiny: a second thread only adds synchronisation (very slow on a busy machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
