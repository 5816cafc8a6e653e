"""The package list only; pyproject.toml holds everything else.

The YAML training defaults stay in the repository's top-level configs/ folder and ship as the
package anomaly.configs (pyproject.toml's package-dir maps it). Automatic discovery finds only the
packages under anomaly/, so discover those here and add that one.
"""

from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages(include=["anomaly", "anomaly.*"]), "anomaly.configs"])
