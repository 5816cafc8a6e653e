"""Detectors by name: the five autoencoders, the pixel-gaussian baseline and the feature detectors.

Every module of this package that defines a detector registers its classes with
`anomaly.detectors.base.register`; `load_all` imports the modules, so a new detector is one new
module here (plus its `configs/<name>.yaml`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.resources
import pkgutil

from anomaly.detectors.base import REGISTRY, Detector, detector_class, register

__all__ = ["Detector", "register", "detector_class", "list_detectors", "is_autoencoder", "uses_backbone",
           "load_all", "declared_names"]

# Modules of this package that hold no detector.
_HELPERS = {"base", "features"}


@functools.cache
def load_all() -> None:
    """Import every detector module (once: the registry is looked up often), so that each class
    has registered itself."""
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _HELPERS:
            importlib.import_module(f"{__name__}.{module.name}")


def list_detectors() -> list[str]:
    """Every name `-a/--architecture` accepts: autoencoders, baselines, then the feature detectors."""
    load_all()
    order = {"autoencoder": 0, "baseline": 1, "features": 2}
    return sorted(REGISTRY, key=lambda n: order[REGISTRY[n].family])


def is_autoencoder(name: str) -> bool:
    return name in list_detectors() and REGISTRY[name].family == "autoencoder"


def uses_backbone(name: str) -> bool:
    """Whether a detector reads a pretrained backbone (`--backbone`)."""
    return name in list_detectors() and REGISTRY[name].uses_backbone


@functools.cache
def declared_names() -> tuple[str, ...]:
    """The names the detector modules register, read from their source without importing them.

    Importing a detector module loads TensorFlow (seconds, minutes on a busy machine); the
    command line checks `-a` against these names first, so a typo is reported at once. A test
    checks that they are exactly the registry's names.
    """
    import ast

    names = []
    for module in pkgutil.iter_modules(__path__):
        if module.name in _HELPERS:
            continue
        tree = ast.parse(importlib.resources.files(__name__).joinpath(f"{module.name}.py").read_text("utf-8"))
        for node in tree.body:
            if not (isinstance(node, ast.ClassDef)
                    and any(getattr(d, "id", None) == "register" for d in node.decorator_list)):
                continue
            for statement in node.body:  # `name = "..."` (a ClassVar annotation is not used here)
                if (isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Constant)
                        and any(getattr(t, "id", None) == "name" for t in statement.targets)):
                    names.append(statement.value.value)
    return tuple(names)
