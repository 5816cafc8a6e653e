"""The console entry points: each module parses its flags, calls the library and prints.

Importing this package silences TensorFlow's C++ start-up lines (absl's "WARNING: All log
messages before absl::InitializeLog()", oneDNN and CUDA probing, "failed call to cuInit" on a
machine without a GPU): they read as failures to a new user. `--verbose` keeps them, and so does
a TF_CPP_MIN_LOG_LEVEL the user set.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys

from anomaly import TF_LOG_LEVEL_SET_BY_USER

VERBOSE_FLAG = "--verbose"


@contextlib.contextmanager
def stderr_silenced():
    """Send file descriptor 2 to /dev/null (C++ writes there directly, past sys.stderr)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Imports `tensorflow` with stderr silenced; everything else is left to the other finders."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once is enough, and find_spec below must not find us again
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            exec_module = spec.loader.exec_module

            def quiet_exec(module):
                with stderr_silenced():
                    exec_module(module)

            spec.loader.exec_module = quiet_exec
        return spec


if VERBOSE_FLAG not in sys.argv[1:] and not TF_LOG_LEVEL_SET_BY_USER and "tensorflow" not in sys.modules:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # also hides "failed call to cuInit" after the import
    sys.meta_path.insert(0, _QuietTensorFlowImport())
