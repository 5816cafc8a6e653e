"""Reading images and masks from disk into float arrays of the model's input shape."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from skimage.transform import resize

from anomaly.errors import AnomalyError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
COLOR_MODES = ("grayscale", "rgb")

# ITU-R 601-2 luma, the weights of PIL's "L" conversion that the original toolkit used.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def is_image_file(path: Path) -> bool:
    """True for a regular file with one of the supported image extensions."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def read_raw(path: Path) -> np.ndarray:
    """Decode a file into an array of shape (H, W) or (H, W, C) in its own dtype."""
    try:
        with Image.open(path) as img:
            img.load()  # forces a full decode, so a truncated file fails here and not later
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif img.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("L" if img.mode == "1" else "RGB")
            array = np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise AnomalyError(f"{path}: cannot read image ({exc})") from None
    if array.ndim not in (2, 3) or array.size == 0:
        raise AnomalyError(f"{path}: expected a 2-D gray or colour image, got shape {array.shape}")
    return array


def _to_unit_float(array: np.ndarray) -> np.ndarray:
    """Scale integer or float pixels to float32 in [0, 1] by the dtype's range."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        if array.dtype.itemsize > 2 and array.max(initial=0) <= 65535:
            # PIL opens 16-bit grey PNG/TIFF as 32-bit mode "I": the range is still 16 bit
            return array.astype(np.float32) / np.float32(65535)
        return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)
    array = array.astype(np.float32)
    return np.clip(array, 0.0, 1.0) if array.max(initial=0.0) <= 1.0 else array / array.max()


def _convert_channels(array: np.ndarray, color_mode: str) -> np.ndarray:
    """Turn an (H, W) or (H, W, C) float image into (H, W, 1) or (H, W, 3)."""
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] in (2, 4):  # gray+alpha, RGBA: alpha is dropped
        array = array[..., :-1]
    if color_mode == "grayscale":
        if array.shape[-1] == 3:
            array = (array @ LUMA)[..., None]
        return array
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


def conform(array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """One decoded image as float32 `shape` (H, W, C with C 1 or 3) in [0, 1].

    Args:
        array: (H, W) or (H, W, C) pixels, integer (scaled by the dtype's range) or float.
        shape: the model's input shape.

    Returns:
        The image converted to the channels and resized (bilinear, anti-aliased) to the size.
    """
    color_mode = "grayscale" if shape[-1] == 1 else "rgb"
    array = _convert_channels(_to_unit_float(np.asarray(array)), color_mode)
    size = tuple(shape[:2])
    if array.shape[:2] != size:
        array = resize(array, size + array.shape[2:], order=1, anti_aliasing=True, preserve_range=True,
                       mode="reflect")
    return np.ascontiguousarray(array, dtype=np.float32)


def read_image(path: Path, color_mode: str, size: tuple[int, int]) -> np.ndarray:
    """Read one image as float32 (H, W, C) in [0, 1] at the model's input size.

    Args:
        path: image file (PNG, JPEG, BMP or TIFF; 8 or 16 bit; gray, RGB or RGBA).
        color_mode: "grayscale" (1 channel) or "rgb" (3 channels).
        size: (height, width) to resize to, with bilinear interpolation and anti-aliasing
            (the original's nearest-neighbour resize aliases on large photographs).

    Returns:
        The image array.
    """
    return conform(read_raw(Path(path)), (*size, 1 if color_mode == "grayscale" else 3))


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, UnidentifiedImageError) as exc:
        raise AnomalyError(f"{path}: cannot read image ({exc})") from None


def read_mask(path: Path, image_path: Path, size: tuple[int, int]) -> np.ndarray:
    """Read a ground-truth mask as bool (H, W), resized with nearest neighbour.

    Raises:
        AnomalyError: when the mask cannot be read or its size differs from its image's.
    """
    raw = read_raw(Path(path))
    expected = image_size(Path(image_path))
    if raw.shape[:2] != expected:
        raise AnomalyError(f"{path}: mask is {raw.shape[1]}x{raw.shape[0]} but its image "
                           f"{image_path} is {expected[1]}x{expected[0]}")
    mask = raw if raw.ndim == 2 else raw[..., 0]
    mask = mask > 0
    if mask.shape != tuple(size):
        mask = resize(mask, tuple(size), order=0, anti_aliasing=False, preserve_range=True) > 0.5
    return mask


def read_images(paths: list[Path], color_mode: str, size: tuple[int, int],
                workers: int = 4) -> np.ndarray:
    """Read many images into one float32 array (N, H, W, C), decoding in threads."""
    if color_mode not in COLOR_MODES:
        raise AnomalyError(f"unknown colour mode '{color_mode}': expected one of {', '.join(COLOR_MODES)}")
    channels = 1 if color_mode == "grayscale" else 3
    out = np.empty((len(paths), *size, channels), dtype=np.float32)

    def _load(i: int) -> None:
        out[i] = read_image(paths[i], color_mode, size)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_load, range(len(paths))))
    return out


# Training images up to this many bytes (as float32) are read into memory once; a larger set is
# read from its files batch by batch, so memory stays flat however many images there are.
IN_MEMORY_BYTES = 1 << 30


class ImageFiles:
    """Image files as a read-only, lazily read float32 (N, H, W, C) array.

    Indexing with an integer reads one image, with a slice or an index array a stack; the whole
    set is read only when converted with `np.asarray` (see `materialise`). Detectors iterate it
    in batches, so a training set of thousands of images never has to fit in memory.

    Args:
        paths: the image files, in order.
        color_mode: "grayscale" or "rgb".
        size: (height, width) every image is resized to.
        workers: decoding threads per batch.
    """

    dtype = np.dtype(np.float32)
    ndim = 4

    def __init__(self, paths: list[Path], color_mode: str, size: tuple[int, int], workers: int = 4):
        if color_mode not in COLOR_MODES:
            raise AnomalyError(f"unknown colour mode '{color_mode}': expected one of {', '.join(COLOR_MODES)}")
        self.paths = [Path(p) for p in paths]
        self.color_mode, self.size, self.workers = color_mode, tuple(size), workers
        self.shape = (len(self.paths), *self.size, 1 if color_mode == "grayscale" else 3)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return read_image(self.paths[key], self.color_mode, self.size)
        picked = self.paths[key] if isinstance(key, slice) else [self.paths[i] for i in np.asarray(key).ravel()]
        return read_images(picked, self.color_mode, self.size, self.workers)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = read_images(self.paths, self.color_mode, self.size, self.workers)
        return images if dtype is None else images.astype(dtype, copy=False)

    def __iter__(self):
        for batch in self.batches(32):
            yield from batch

    def verify(self, batch_size: int = 32) -> None:
        """Read every image once and drop it: an unreadable file raises AnomalyError now, not
        from inside a `tf.data` pipeline that would report it as a TensorFlow error."""
        for _ in self.batches(batch_size):
            pass

    def batches(self, batch_size: int):
        """Consecutive stacks of `batch_size` images; the next one is decoded while this one is used."""
        starts = range(0, len(self), batch_size)
        with ThreadPoolExecutor(max_workers=1) as reader:
            pending = reader.submit(self.__getitem__, slice(0, batch_size)) if starts else None
            for start in starts:
                batch = pending.result()
                nxt = start + batch_size
                pending = reader.submit(self.__getitem__, slice(nxt, nxt + batch_size)) if nxt < len(self) else None
                yield batch


def materialise(images, limit: int | None = None):
    """`images` as one in-memory array when an `ImageFiles` set is at most `limit` bytes
    (default `IN_MEMORY_BYTES`); else as is."""
    if isinstance(images, ImageFiles) and images.nbytes <= (IN_MEMORY_BYTES if limit is None else limit):
        return np.asarray(images)
    return images


def batches(images, batch_size: int):
    """Consecutive stacks of at most `batch_size` images of an array or an `ImageFiles`."""
    if isinstance(images, ImageFiles):
        yield from images.batches(batch_size)
        return
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]
