"""Image reading that fails loudly and precisely, as a drop-in for Detectron2's ``read_image``.

Detectron2's reader hands PIL's exception through untouched ("cannot identify image file <_io.BytesIO ...>"),
which names neither the file nor the fix, and it converts 16-bit grayscale by clipping everything above 255
to white. :func:`read_image` returns the same arrays as ``detectron2.data.detection_utils.read_image`` for
ordinary 8-bit files (EXIF orientation applied the same way) and differs only where Detectron2 is wrong or
unhelpful:

* missing, empty, truncated or non-image files raise :class:`ImageReadError` naming the file, the problem and
  the fix;
* 16-bit grayscale is scaled to 8 bits (65535 -> 255), not clipped; 16-bit RGB PNGs keep their high byte,
  which is what Pillow decodes them to (within one level of the same scaling);
* an alpha channel (RGBA, LA, palette with transparency) is dropped, not composited: the colour channels are
  kept as stored, matching Detectron2, Pillow's ``convert("RGB")`` and OpenCV's ``imread``, so a model sees
  the same pixels it was trained or pretrained on with those readers;
* CMYK JPEGs (including Adobe's inverted CMYK) and palette images are converted to RGB.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from detectron2.data import detection_utils as d2_utils
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.utils.file_io import PathManager
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_FORMATS",
    "ImageReadError",
    "ImageSizeMismatchError",
    "check_image_size",
    "read_image",
    "read_image_or_skip",
]

IMAGE_FORMATS = ("BGR", "RGB", "L")

_EXIF_ORIENTATION_TAG = 274
# EXIF orientation value -> the transpose that brings the image upright (EXIF 2.3, table "Orientation").
_UPRIGHT_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_REDOWNLOAD = (
    "re-download or re-extract it, or leave it out (remove it from the input folder or the dataset's "
    "annotation file)"
)


class ImageReadError(OSError):
    """An image file that cannot be turned into pixels; ``path``, ``reason`` and ``fix`` say why and what to
    do about it."""

    def __init__(self, path: str, reason: str, fix: str):
        self.path, self.reason, self.fix = str(path), reason, fix
        super().__init__(f"Cannot read image {self.path}: {reason}. Fix: {fix}.")

    def __reduce__(self):  # rebuild from the three fields, e.g. when sent back from a worker process
        return type(self), (self.path, self.reason, self.fix)


class ImageSizeMismatchError(SizeMismatchError):
    """The decoded image's size differs from the ``width``/``height`` recorded in its annotation."""


def read_image(path: str, format: str = "BGR") -> np.ndarray:
    """Read an image file into an HWC uint8 array, EXIF orientation applied.

    Args:
        path: a local path or any URI Detectron2's ``PathManager`` opens.
        format: "BGR" (Detectron2's default ``INPUT.FORMAT``), "RGB" (3 channels) or "L" (grayscale, HW1).

    Raises:
        ImageReadError: the file is missing, empty, truncated, not an image, or in a mode with no 8-bit
            meaning.
        ValueError: ``format`` is not one of :data:`IMAGE_FORMATS`.
    """
    if format not in IMAGE_FORMATS:
        raise ValueError(f"read_image: format must be one of {IMAGE_FORMATS}, got {format!r}")
    image = _open_upright(path)
    rgb_or_gray = _to_8bit(image, path, gray=format == "L")
    if format == "L":
        return rgb_or_gray[:, :, None]
    if format == "BGR":
        return np.ascontiguousarray(rgb_or_gray[:, :, ::-1])
    return rgb_or_gray


def read_image_or_skip(path: str, format: str, is_train: bool) -> np.ndarray | None:
    """:func:`read_image` for a dataset mapper: in training an unreadable image is logged with its path, the
    reason and the fix and gives None (the training loader then draws another, see
    ``hiera_det.data.samplers.SeededMapDataset``); in evaluation the ``ImageReadError`` propagates, since
    dropping test images would change the reported accuracy."""
    try:
        return read_image(path, format=format)
    except ImageReadError as e:
        if not is_train:
            raise
        logger.warning("skipping unreadable training image: %s", e)
        return None


def check_image_size(dataset_dict: dict, image: np.ndarray) -> None:
    """Detectron2's ``check_image_size`` with an error that names the file, both sizes and the likely cause.

    Fills in ``width``/``height`` when the dict has none, as Detectron2 does.
    """
    found_wh = (image.shape[1], image.shape[0])
    if "width" in dataset_dict or "height" in dataset_dict:
        expected_wh = (dataset_dict.get("width"), dataset_dict.get("height"))
        if found_wh != expected_wh:
            name = dataset_dict.get("file_name", "<no file_name in the dataset dict>")
            if found_wh == expected_wh[::-1]:
                cause = (
                    "width and height are swapped, which usually means the annotation was made on the stored "
                    "pixels while the reader applies the file's EXIF rotation (as Detectron2 does); fix the "
                    "annotation's width/height (and boxes) for the upright image, or strip the EXIF "
                    "orientation tag from the file"
                )
            else:
                cause = (
                    "the annotation's width/height belong to a different file or a resized copy; fix the "
                    "width/height (and boxes) in the annotation file, or restore the original image"
                )
            raise ImageSizeMismatchError(
                f"Image {name} is {found_wh[0]}x{found_wh[1]} (width x height) but its annotation says "
                f"{expected_wh[0]}x{expected_wh[1]}: {cause}."
            )
    dataset_dict.setdefault("width", found_wh[0])
    dataset_dict.setdefault("height", found_wh[1])


def _open_upright(path: str) -> Image.Image:
    try:
        with PathManager.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageReadError(
            path,
            "the file does not exist",
            "check the path; for a dataset, check its image root (Detectron2 datasets live under "
            "$DETECTRON2_DATASETS, default ./datasets) and that the annotation's file_name is relative to it",
        ) from None
    except IsADirectoryError:
        raise ImageReadError(path, "the path is a directory", "point file_name at an image file") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied", "make the file readable by this user") from None
    if not data:
        raise ImageReadError(path, "the file is empty (0 bytes)", _REDOWNLOAD)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now, so truncation is reported here rather than deep in a transform
    except UnidentifiedImageError:
        raise ImageReadError(path, f"not an image file ({_describe_content(data)})", _REDOWNLOAD) from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(
            path,
            f"Pillow refuses it as a possible decompression bomb ({e})",
            "if the image is genuine, raise PIL.Image.MAX_IMAGE_PIXELS before training, or downscale it",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports cut-off files as OSError ("image file is truncated", "Truncated File Read") or
        # SyntaxError ("broken PNG file"), depending on the codec and where the data ends.
        raise ImageReadError(
            path, f"the file is truncated or corrupt ({len(data)} bytes; Pillow: {e})", _REDOWNLOAD
        ) from None
    return _apply_exif_orientation(image)


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
    except Exception:  # a malformed EXIF block must not make the pixels unreadable; Detectron2 ignores it too
        return image
    transpose = _UPRIGHT_TRANSPOSE.get(orientation)
    return image if transpose is None else image.transpose(transpose)


def _to_8bit(image: Image.Image, path: str, gray: bool) -> np.ndarray:
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and _fits_16_bits(image)):
        # Pillow's convert() clips these to 255, turning most of a 16-bit image white.
        values = np.asarray(image).astype(np.float32)
        gray8 = np.rint(values * (255.0 / 65535.0)).astype(np.uint8)
        return gray8 if gray else np.repeat(gray8[:, :, None], 3, axis=2)
    if mode in ("I", "F"):
        raise ImageReadError(
            path,
            f"Pillow mode {mode!r} ({'32-bit integer' if mode == 'I' else 'floating-point'} pixels) has no "
            "defined 8-bit range",
            "convert the file to an 8-bit or 16-bit PNG/JPEG with the intended intensity range",
        )
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow's required route for palettes with a transparent entry
    try:
        return np.asarray(image.convert("L" if gray else "RGB"))
    except (ValueError, OSError) as e:
        raise ImageReadError(
            path, f"Pillow cannot convert mode {mode!r} to {'L' if gray else 'RGB'} ({e})", "save it as RGB"
        ) from None


def _fits_16_bits(image: Image.Image) -> bool:
    low, high = image.getextrema()
    return 0 <= low and high <= 65535


def _describe_content(data: bytes) -> str:
    head = data[:64].lstrip()
    if head[:1] == b"<":
        return "it starts like HTML/XML text, typically an error page saved by a failed download"
    if head[:1] in (b"{", b"["):
        return "it starts like JSON text"
    if head.startswith(b"PK"):
        return "it is a zip archive"
    return f"unrecognized content starting with {data[:8]!r}"
