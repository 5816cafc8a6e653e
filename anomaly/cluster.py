"""Ray, the engine that runs benchmark grids and batch prediction past one machine.

Optional: `pip install "anomaly[cluster]"`. Without `--cluster` nothing here is imported and
every command runs in its own process as before.

`--cluster` takes:

- `local`: start a Ray cluster on this machine for the length of the command (loopback only,
  no dashboard) and stop it at the end;
- `auto`: join the cluster this machine is part of (`ray start --head` / `ray start --address`
  ran here, or RAY_ADDRESS is set);
- `ray://HOST:PORT`: a remote cluster through the Ray Client.

Every node needs this package (same version) installed and the paths the command names (data,
model directory, output folder) mounted at the same place: see docs/cluster.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from anomaly.errors import AnomalyError

CHOICES = ("local", "auto", "ray://HOST:PORT")
_CLIENT = re.compile(r"^ray://[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
INSTALL_HINT = 'Ray is not installed: pip install "anomaly[cluster]"'


def check_address(value: str, option: str = "cluster") -> str:
    """`value` if it is a `--cluster` value; one-line AnomalyError otherwise (or when Ray is
    missing), before any work is done."""
    if value not in ("local", "auto") and not _CLIENT.match(value):
        raise AnomalyError(f"expected one of {', '.join(CHOICES)}, got {value!r}", option)
    if importlib.util.find_spec("ray") is None:  # found, not imported: Ray takes seconds to import
        raise AnomalyError(INSTALL_HINT, option)
    return value


@dataclass(frozen=True)
class ClusterInfo:
    """The cluster a command runs on.

    Attributes:
        address: the `--cluster` value.
        cpus, gpus: the cluster's logical CPUs and GPUs (all nodes).
        node_cpus: the most CPUs of one node (a worker's threads cannot span nodes).
        nodes: alive nodes.
    """

    address: str
    cpus: int
    gpus: int
    node_cpus: int
    nodes: int


@contextlib.contextmanager
def connect(address: str, num_cpus: int | None = None) -> Iterator[ClusterInfo]:
    """Connect to (or, for "local", start) a Ray cluster for the `with` block.

    Args:
        address: "local", "auto" or "ray://HOST:PORT" (see the module docstring).
        num_cpus: for "local", the CPUs Ray may schedule on (default: this machine's).

    Yields:
        The cluster's resources.

    Raises:
        AnomalyError: Ray is missing, or no cluster answers at `address`.
    """
    check_address(address)
    import ray

    started = not ray.is_initialized()
    if started:
        # Workers import the package from where this process found it, installed or not.
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}}
        # Ray's start-up notes and the workers' TensorFlow messages would bury the command's own output.
        kwargs = {"runtime_env": env, "log_to_driver": False, "logging_level": logging.ERROR}
        if address == "local":
            kwargs.update(include_dashboard=False, num_cpus=num_cpus)
        try:
            ray.init(address=None if address == "local" else address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise AnomalyError(f"no Ray cluster at {address!r}: {' '.join(str(exc).split())[:200]}",
                               "cluster") from None
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        total = ray.cluster_resources()
        yield ClusterInfo(address, int(total.get("CPU", 0)), int(total.get("GPU", 0)),
                          max((int(n["Resources"].get("CPU", 0)) for n in nodes), default=0), len(nodes))
    finally:
        if started:
            ray.shutdown()


def set_threads(threads: int | None) -> None:
    """Let TensorFlow use `threads` cores in this process (a Ray worker is given its share of a
    node; TensorFlow would otherwise size its pools to the whole node). Call before TensorFlow
    runs anything; later calls are ignored, as TensorFlow allows."""
    if not threads:
        return
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(min(2, int(threads)))
