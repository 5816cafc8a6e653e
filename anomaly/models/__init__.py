"""Convolutional autoencoder architectures (spec section 3) and their registry.

Every builder takes `input_shape=(height, width, channels)` (channels 1 or 3)
and returns an uncompiled `keras.Model` whose output has the input's shape and
a float32 sigmoid activation, and which has a layer named `"latent"`.
"""

from anomaly.errors import AnomalyError
from anomaly.models.baseline_cae import baseline_cae
from anomaly.models.inception_cae import inception_cae
from anomaly.models.mvtec_cae import mvtec_cae
from anomaly.models.resnet_cae import resnet_cae
from anomaly.models.skip_cae import skip_cae

ARCHITECTURES = {
    "mvtecCAE": mvtec_cae,
    "baselineCAE": baseline_cae,
    "inceptionCAE": inception_cae,
    "resnetCAE": resnet_cae,
    "skipCAE": skip_cae,
}

__all__ = [
    "ARCHITECTURES",
    "baseline_cae",
    "build_model",
    "inception_cae",
    "list_architectures",
    "mvtec_cae",
    "resnet_cae",
    "skip_cae",
]


def list_architectures():
    """Returns the registered architecture names, in registry order.

    Returns:
        A list of names accepted by `build_model`.
    """
    return list(ARCHITECTURES)


def build_model(architecture, input_shape):
    """Builds one of the registered autoencoders.

    Args:
        architecture: A name from `list_architectures()`, e.g. `"mvtecCAE"`.
        input_shape: `(height, width, channels)` with channels 1 or 3.

    Returns:
        The uncompiled `keras.Model`, named after the architecture.

    Raises:
        AnomalyError: If `architecture` is not registered, or `input_shape`
            does not suit it.
    """
    builder = ARCHITECTURES.get(architecture)
    if builder is None:
        raise AnomalyError(
            f"unknown architecture {architecture!r}: expected one of "
            f"{', '.join(ARCHITECTURES)}"
        )
    try:
        return builder(input_shape=tuple(input_shape), name=architecture)
    except ValueError as error:
        raise AnomalyError(str(error)) from None


def load_saved_model(path, flag="-p"):
    """Loads a `.keras` model file for inference, with a one-line error for a bad file.

    Keras' safe mode stays on, so a file cannot smuggle in code through a Lambda layer.

    Args:
        path: The `.keras` file.
        flag: The option that named the file, for the error message.

    Returns:
        The uncompiled `keras.Model`.

    Raises:
        AnomalyError: If the file is missing, not a `.keras` archive (truncated, say), or
            not a model Keras can rebuild.
    """
    import zipfile
    from pathlib import Path

    import keras

    path = Path(path)
    if not path.is_file():
        raise AnomalyError(f"{flag} {path}: no such model file")
    # Keras reports a file that is not a zip archive as "File not found", which misleads.
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise AnomalyError(f"{flag} {path}: cannot load model: not a .keras archive (truncated or corrupt file)")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file: Keras raises many kinds
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise AnomalyError(f"{flag} {path}: cannot load model ({type(exc).__name__}: {text})") from None
