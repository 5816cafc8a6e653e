"""The training defaults, shipped as the package `anomaly.configs` (pyproject.toml maps this folder).

This file is needed only so that editable installs (`pip install -e .`) can import the folder as
`anomaly.configs`; `anomaly.config` reads the YAML files with `importlib.resources`.
"""
