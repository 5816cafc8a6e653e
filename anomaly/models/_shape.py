"""Input-shape checks shared by the architecture builders."""


def check_input_shape(input_shape, name, multiple=None):
    """Raise ValueError unless `input_shape` is (height, width, 1 or 3).

    Args:
        input_shape: the builder's `input_shape`.
        name: the model name, for the message.
        multiple: when given, height and width must be positive multiples of it.

    Returns:
        (height, width, channels).
    """
    if len(input_shape) != 3:
        raise ValueError(f"{name}: input_shape must be (height, width, channels), got {input_shape!r}")
    height, width, channels = input_shape
    if channels not in (1, 3):
        raise ValueError(f"{name}: input_shape must have 1 (grayscale) or 3 (RGB) channels, got {channels}")
    if multiple is not None and (height is None or width is None or height <= 0 or width <= 0
                                 or height % multiple or width % multiple):
        raise ValueError(f"{name}: height and width must be positive multiples of {multiple}, got {height}x{width}")
    return height, width, channels
