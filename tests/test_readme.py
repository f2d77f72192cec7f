"""The README's quick start runs as printed."""

from __future__ import annotations

import re

from conftest import ROOT


def test_readme_quick_start_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Use the package"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md quick start", "exec"), namespace)
    assert tuple(namespace["out"].shape) == (20, 28)
