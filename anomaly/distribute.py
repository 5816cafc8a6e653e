"""Training on several devices with `tf.distribute` (the `strategy` option of autoencoders and CutPaste).

- "none" (default): no strategy at all; training runs exactly as it always has, on one device.
- "mirrored": `tf.distribute.MirroredStrategy` over this machine's GPUs (its logical CPUs when it
  has none): one replica per device, variables mirrored, gradients all-reduced every step.
- "multi-worker": `tf.distribute.MultiWorkerMirroredStrategy` over the hosts that `TF_CONFIG`
  names; every worker runs the same command on the same data and writes the same model (give
  each its own output folder). TensorFlow accepts it only before it has started
  (`anomaly-train` creates it first; a program calls `get_strategy("multi-worker")` first).

The configured batch size is the global batch: each of the R replicas gets 1/R of every batch,
so a distributed run sees the same batches and takes the same steps as one device, and with the
losses averaged over the global batch it follows the same loss curve; the learning rate is
therefore unchanged. More devices buy throughput only when the batch grows with them: raise
`batch_size` (the range test then finds the rate for it; a fixed `lr` is the user's to scale,
e.g. linearly with the batch).

- Keras `fit` (the autoencoders' training) splits the batches itself; the model is built and
  compiled in the strategy's scope. It divides each replica's mean loss by R and sums the
  gradients: the global mean when every replica gets as many images. An epoch's last, smaller
  batch may split unevenly (3 images: 2 + 1); that step then weights its images unequally
  (measured: 3e-5 relative on the loss of mvtecCAE, 15 images, batch 4, after 3 epochs).
- The custom steps (the learning-rate range test, CutPaste) divide each replica's summed loss
  by the global batch's actual size (`global_mean_loss`): exact for any split.
- Batch normalisation computes its statistics over the global batch (`synchronize_batch_norm`).
- Refused: a batch (or an epoch's last batch) with fewer images than replicas, XLA, and a time
  budget across workers (`check_batch_size`, `check_options`).
- Keras 3.15's `fit` fails under a multi-worker strategy (keras-team/keras#20585); `keras_fit`
  works around it (tested: two workers on one host follow the one-device curve).
"""

from __future__ import annotations

import contextlib
import random

from anomaly.errors import AnomalyError

STRATEGIES = ("none", "mirrored", "multi-worker")

_created: dict = {}


def get_strategy(name: str):
    """The `tf.distribute.Strategy` for a `strategy` option (None for "none"), created once per process."""
    if name not in STRATEGIES:
        raise AnomalyError(f"unknown value '{name}': expected one of {', '.join(STRATEGIES)}", "strategy")
    if name == "none":
        return None
    if name not in _created:
        import tensorflow as tf

        if name == "mirrored":
            # MirroredStrategy() alone takes every GPU, or one CPU: a CPU-only machine uses its
            # logical CPUs (one unless configured with tf.config.set_logical_device_configuration).
            devices = (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU"))
            _created[name] = tf.distribute.MirroredStrategy([d.name for d in devices])
        else:
            try:
                _created[name] = tf.distribute.MultiWorkerMirroredStrategy()
            except RuntimeError as exc:  # "Collective ops must be configured at program startup"
                raise AnomalyError(f"multi-worker: {exc}: create it before TensorFlow starts (anomaly-train "
                                   "does; a program calls anomaly.distribute.get_strategy('multi-worker') "
                                   "first)", "strategy") from None
    return _created[name]


def check_options(strategy: str, jit_compile: bool = False, max_minutes: float | None = None) -> None:
    """Refuse what a strategy cannot do: XLA (`jit_compile` compiles a step for one device, and the
    replicas' variables live on others); a `max_minutes` budget across workers (each worker's clock
    would stop training at its own step, and the others would wait for it forever)."""
    if strategy not in (None, "none") and jit_compile:
        raise AnomalyError(f"not with strategy {strategy}: XLA compiles a step for one device", "jit_compile")
    if strategy == "multi-worker" and max_minutes is not None:
        raise AnomalyError("not with strategy multi-worker: the workers would stop at different steps; "
                           "give -e instead", "max_minutes")


def replicas(strategy) -> int:
    """Replicas that share each batch (1 without a strategy)."""
    return 1 if strategy is None else strategy.num_replicas_in_sync


def check_batch_size(strategy, batch_size: int, **images: int) -> None:
    """Refuse a global batch that would leave a replica without images: one smaller than the
    replicas, or one that leaves a last batch (of the `images` counts, e.g. training=13) smaller
    than them (a convolution on an empty batch fails)."""
    n = replicas(strategy)
    if batch_size < n:
        raise AnomalyError(f"{batch_size} is smaller than the {n} replicas of the strategy: the batch is "
                           f"the global one, split between them; give at least {n}", "batch_size")
    for kind, count in images.items():
        last = count % batch_size
        if 0 < last < n:
            raise AnomalyError(f"{count} {kind} images in batches of {batch_size} leave a last batch of {last}, "
                               f"fewer than the {n} replicas (one would get no image); choose a batch size "
                               f"that leaves none or at least {n}", "batch_size")


def unmirrored(build, trained):
    """`trained`'s weights in the network `build()` makes outside the strategy's scope (plain
    variables): the fitted detector then predicts, saves and exports as a one-device one. Python's
    random state is kept, as if nothing had been built, so what follows draws as on one device."""
    weights, state = trained.get_weights(), random.getstate()
    plain = build()
    plain.set_weights(weights)
    random.setstate(state)
    return plain


def scope(strategy):
    """The strategy's scope, or nothing at all without one (the one-device path stays as it was)."""
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def distribute(strategy, dataset):
    """A dataset of global batches split between the replicas (for a custom loop; Keras `fit`
    splits its datasets itself)."""
    return strategy.experimental_distribute_dataset(shard_by_data(dataset))


def shard_by_data(dataset):
    """`dataset` with data sharding: every worker builds the same seeded dataset and keeps its
    replicas' parts of each global batch (TensorFlow would otherwise look for files to shard)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


@contextlib.contextmanager
def keras_fit(model, strategy, dataset):
    """Around Keras `fit` under a strategy: works around Keras 3 (3.15) under a multi-worker
    MultiWorkerMirroredStrategy, whose `fit` fails (keras-team/keras#20585) where it

    - builds a compiled model's metrics from a batch averaged with `strategy.reduce`, which that
      strategy cannot do for an (x, y) pair ("Attempt to convert a value (PerReplica..."): they
      are built here from one global batch of `dataset` instead, and that step is skipped;
    - averages each step's logs across the workers along an axis 0 that scalars do not have
      ("Invalid reduction dimension 0"): the logs (the loss tracker, the metrics) are mirrored
      variables, summed across all replicas at every update, so every worker holds the global
      values already and the local replicas' mean is taken, as on one machine.

    Nothing changes for other strategies."""
    import tensorflow as tf

    multi_worker = (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                    and strategy.extended._in_multi_worker_mode())
    if not multi_worker:
        yield
        return
    from keras.src.backend.tensorflow import trainer

    x, y = next(iter(dataset.take(1)))
    with strategy.scope():
        model._symbolic_build(data_batch=(x, y, None))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    reduces_across_workers = trainer._collective_all_reduce_multi_worker
    trainer._collective_all_reduce_multi_worker = lambda strategy: False
    try:
        yield
    finally:
        trainer._collective_all_reduce_multi_worker = reduces_across_workers
        del model._maybe_symbolic_build


def global_mean_loss(per_example):
    """In a replica: this replica's share of the mean loss over the global batch.

    The sum of its examples' losses divided by the global batch's actual size (all-reduced, so
    an epoch's smaller last batch, split unevenly, is averaged right); the replicas' shares sum,
    as the optimizer sums their gradients, to the one-device mean.
    """
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    count = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.shape(per_example)[0])
    return tf.nn.compute_average_loss(per_example, global_batch_size=count)


def synchronize_batch_norm(model) -> None:
    """Make every BatchNormalization layer (nested models included) compute its batch statistics
    over the global batch, as one device does, instead of each replica's part of it."""
    import keras

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
