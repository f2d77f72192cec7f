"""The GitHub workflows are well formed, and every `make X` they run is a target of the Makefile."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
ACTION = re.compile(r"^[\w.-]+/[\w./-]+@[\w.-]+$")  # owner/repo(/path)@ref
MAKE = re.compile(r"(?:^|[;&|(]|\s)make\s+([^;&|)\n#]*)")  # make and its words, up to the end of the command


def makefile_targets(makefile: Path) -> set[str]:
    """Names that appear before a rule's ``:`` (not ``:=``) at the start of a Makefile line."""
    targets = set()
    for line in makefile.read_text().splitlines():
        match = re.match(r"^([\w./$()-][\w./$() -]*?)\s*::?(?!=)", line)
        if match and not line.startswith("\t"):
            targets.update(match.group(1).split())
    return targets


def make_goals(command: str) -> list[str]:
    """The goals of every ``make ...`` in a shell command (``VAR=value`` arguments and options left out)."""
    goals = []
    for match in MAKE.finditer(command):
        goals += [word for word in match.group(1).split() if "=" not in word and not word.startswith("-")]
    return goals


def problems(workflow: dict, targets: set[str]) -> list[str]:
    """Everything wrong with one parsed workflow, as sentences; empty when it is well formed."""
    found = []
    if not isinstance(workflow, dict) or not workflow.get("name"):
        return ["a workflow is a mapping with a name"]
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    if not triggers:
        found.append("no `on:` triggers")
    jobs = workflow.get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        return found + ["no jobs"]
    for name, job in jobs.items():
        if not isinstance(job, dict) or "runs-on" not in job:
            found.append(f"job {name}: no runs-on")
            continue
        for needed in [job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", []):
            if needed not in jobs:
                found.append(f"job {name} needs {needed!r}, which is not a job")
        steps = job.get("steps")
        if not isinstance(steps, list) or not steps:
            found.append(f"job {name}: no steps")
            continue
        ids = {step.get("id") for step in steps if isinstance(step, dict)}
        for i, step in enumerate(steps):
            if not isinstance(step, dict) or ("uses" in step) == ("run" in step):
                found.append(f"job {name}, step {i}: needs exactly one of `uses` and `run`")
                continue
            if "uses" in step and not ACTION.match(step["uses"]):
                found.append(f"job {name}, step {i}: `uses: {step['uses']}` is not owner/repo@ref")
            if "run" in step:
                for goal in make_goals(step["run"]):
                    if goal not in targets:
                        found.append(f"job {name}, step {i}: `make {goal}` is not a Makefile target")
            for text in map(str, step.values()):
                for ref in re.findall(r"steps\.([\w-]+)\.", text):
                    if ref not in ids:
                        found.append(f"job {name}, step {i}: refers to step id {ref!r}, which no step has")
        outputs = str(job.get("environment", ""))
        for ref in re.findall(r"steps\.([\w-]+)\.", outputs):
            if ref not in ids:
                found.append(f"job {name}: its environment refers to step id {ref!r}, which no step has")
    return found


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def steps_using(workflow: dict, action: str) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job["steps"] if step.get("uses", "").startswith(action)]


@pytest.mark.parametrize("name", ["ci.yml", "book.yml"])
def test_workflow_is_well_formed(name: str) -> None:
    assert problems(load(name), makefile_targets(ROOT / "Makefile")) == []


def test_the_checker_finds_what_is_wrong() -> None:
    broken = {
        "name": "broken",
        True: {"push": None},
        "jobs": {
            "a": {"runs-on": "ubuntu-latest", "needs": "z", "steps": [{"run": "make tset"}, {"uses": "x", "run": "y"}]},
            "b": {"steps": [{"run": "true"}]},
            "c": {"runs-on": "ubuntu-latest", "steps": [{"uses": "actions/checkout", "with": {"p": "${{ steps.q.x }}"}}]},
        },
    }
    assert problems(broken, {"test"}) == [
        "job a needs 'z', which is not a job",
        "job a, step 0: `make tset` is not a Makefile target",
        "job a, step 1: needs exactly one of `uses` and `run`",
        "job b: no runs-on",
        "job c, step 0: `uses: actions/checkout` is not owner/repo@ref",
        "job c, step 0: refers to step id 'q', which no step has",
    ]
    assert make_goals("cd x && make -j2 book PYG_INDEX= test\nmake pyg") == ["book", "test", "pyg"]
    assert {"book", "test", "colab-check", "pyg"} <= makefile_targets(ROOT / "Makefile")


def test_ci_runs_make_test_on_push_and_pull_request_with_caches() -> None:
    ci = load("ci.yml")
    assert {"push", "pull_request"} <= set(ci.get("on", ci.get(True)))
    runs = [step["run"] for job in ci["jobs"].values() for step in job["steps"] if "run" in step]
    assert any("test" in make_goals(run) for run in runs)
    cached = {step["with"]["path"] for step in steps_using(ci, "actions/cache@")}
    assert ".venv" in cached and any("pip" in path for path in cached)
    assert any("3.11" in str(job.get("container", "")) for job in ci["jobs"].values())


def test_book_is_deployed_to_pages_the_documented_way() -> None:
    book = load("book.yml")
    assert book["permissions"]["pages"] == "write" and book["permissions"]["id-token"] == "write"
    runs = [step["run"] for job in book["jobs"].values() for step in job["steps"] if "run" in step]
    assert any("book" in make_goals(run) for run in runs)
    (upload,) = steps_using(book, "actions/upload-pages-artifact@")
    assert upload["with"]["path"] == "_build/html"  # where `make book` writes the HTML
    (deploy,) = steps_using(book, "actions/deploy-pages@")
    deploy_job = next(job for job in book["jobs"].values() if deploy in job["steps"])
    assert deploy_job["environment"]["name"] == "github-pages"
