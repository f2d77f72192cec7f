"""The chapters' Colab install cell, run with pip replaced by a recorder (the real run is `make colab-check`)."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from colab_cell import colab_cell
from conftest import ROOT

CHAPTER = ROOT / "tutorials" / "01_irreps.ipynb"


def run_cell(monkeypatch: pytest.MonkeyPatch, failing: str | None = None) -> list[list[str]]:
    """Run the cell as in Colab; return the argument lists of its pip calls (a call naming ``failing`` fails)."""
    calls = []

    def fake_run(args, *rest, **kwargs):
        calls.append(args[3:])  # after python -m pip
        return subprocess.CompletedProcess(args, 1 if failing and any(failing in a for a in args) else 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(compile(colab_cell(CHAPTER), "Colab cell", "exec"), {"__name__": "__main__"})
    return calls


def test_the_cell_installs_from_tpconv_lite_source_and_never_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TPCONV_LITE_SOURCE", "file:///somewhere/tpconv-lite")
    calls = run_cell(monkeypatch)
    assert calls[0] == ["install", "-q", "e3nn>=0.5.6,<0.7", "tpconv_lite[proteins] @ file:///somewhere/tpconv-lite"]
    assert calls[1][:5] == ["install", "-q", "--only-binary=:all:", "torch-scatter", "torch-cluster"]
    assert not any(arg.startswith("torch=") or arg == "torch" for call in calls for arg in call)


def test_without_the_variable_the_cell_installs_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TPCONV_LITE_SOURCE", raising=False)
    assert run_cell(monkeypatch)[0][-1].startswith("tpconv_lite[proteins] @ git+https://github.com/")


def test_a_failed_install_stops_with_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TPCONV_LITE_SOURCE", "file:///nowhere")
    with pytest.raises(RuntimeError, match="could not install tpconv_lite from file:///nowhere"):
        run_cell(monkeypatch, failing="tpconv_lite")


def test_missing_wheels_are_not_an_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    run_cell(monkeypatch, failing="torch-scatter")
    assert "pure-torch backend" in capsys.readouterr().out


def test_outside_colab_the_cell_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("the cell ran pip outside Colab"))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(colab_cell(CHAPTER), "Colab cell", "exec"), {"__name__": "__main__"})
