"""Stands in for the installed torch_scatter during `make test-torch`: importing it fails as on a machine without it."""

raise ModuleNotFoundError("torch_scatter is hidden by make test-torch (tests/without_pyg on PYTHONPATH)")
