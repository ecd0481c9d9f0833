"""Images: reading, atomic writing, and the conversions between the two image types of the API.

* numpy ``(H, W, 3)`` uint8 RGB: what :func:`read_image` returns and what detectors and writers take;
* torch ``(B, H, W, C)`` float in ``[0, 1]`` (channel-last): what renderers, fitting and networks use.

:func:`to_uint8_rgb` is the one place that normalises any image a user may hand in (grayscale, RGBA, 16-bit,
float, a torch tensor) to ``(H, W, 3)`` uint8; :func:`image_to_tensor` and :func:`tensor_to_image` convert
between the two API types.

Pixel convention (package-wide): pixel ``(col i, row j)`` is ``image[j, i]`` and covers the continuous square
``[i, i + 1] x [j, j + 1]``; its centre is ``(i + 0.5, j + 0.5)``; x right, y down.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..errors import InputFileError
from .atomic import atomic_write

PathLike = Union[str, os.PathLike]

# Pillow modes holding more than 8 bits per sample, with the full-scale value they are divided by.
_HIGH_DEPTH_FULL_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0}


def _describe(image) -> str:
    return f"{type(image).__name__} of shape {tuple(image.shape)} and dtype {image.dtype}"


def to_uint8_rgb(image) -> np.ndarray:
    """Normalise an image to a ``(H, W, 3)`` uint8 RGB numpy array (a new array; the input is not changed).

    Accepts numpy arrays and torch tensors shaped ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)``, ``(H, W, 4)`` or with a
    leading batch dimension of 1 (``(1, H, W, C)``):

    * grayscale / one channel: replicated to three channels;
    * RGBA: the alpha channel is dropped (colours are kept as stored, not composited);
    * uint8 as is; uint16 scaled by ``255 / 65535`` (rounded); bool to 0 / 255;
    * float (any precision): taken to be in ``[0, 1]``, clipped, scaled by 255 and rounded;
    * other integer types: must already hold values in ``[0, 255]``.

    Raises:
        ValueError: unsupported shape, dtype, or out-of-range integer values (the message states what was received).
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected an image as a numpy array or torch tensor, got {type(image).__name__}")
    arr = image
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(
            "expected an image shaped (H, W), (H, W, 1), (H, W, 3), (H, W, 4) or (1, H, W, C) (channel-last), "
            f"got {_describe(image)}"
        )
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = np.round(arr.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"image holds NaN or inf values ({_describe(image)})")
        out = np.round(np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"integer image of dtype {arr.dtype} must hold values in [0, 255] (use uint16 for 16-bit data), "
                f"got the range [{lo}, {hi}]"
            )
        out = arr.astype(np.uint8)
    else:
        raise ValueError(f"unsupported image dtype: {_describe(image)}")
    c = out.shape[2]
    if c == 1:
        out = np.repeat(out, 3, axis=2)
    elif c == 4:
        out = out[:, :, :3]
    return out.copy() if np.may_share_memory(out, image) else np.ascontiguousarray(out)


def read_image(path: PathLike, *, apply_exif_orientation: bool = False) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB.

    Any format Pillow reads. Grayscale and palette images are expanded to RGB, alpha is dropped, 16-bit
    samples are scaled to 8 bits (``round(v * 255 / 65535)``), CMYK / YCbCr / LAB are converted by Pillow.

    Args:
        path: the image file.
        apply_exif_orientation: rotate / flip by the EXIF orientation tag (as a photo viewer shows it). Off by
            default because landmark annotations (``.pts``) refer to the stored pixel grid.

    Returns:
        ``(H, W, 3)`` uint8 array; ``image[j, i]`` is pixel (col i, row j).

    Raises:
        FileNotFoundError: no such file.
        InputFileError: (a ``ValueError``) the file exists but is not a readable image: empty, truncated, corrupt,
            a folder, another kind of file (the message names the file and the reason).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {str(path)!r}")
    if path.is_dir():
        raise InputFileError(f"cannot read an image from {str(path)!r}: it is a directory")
    if path.stat().st_size == 0:
        raise InputFileError(f"cannot read image {str(path)!r}: the file is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()
            if apply_exif_orientation:
                im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode in _HIGH_DEPTH_FULL_SCALE:
                arr = np.asarray(im).astype(np.float64)
                arr = np.clip(arr / _HIGH_DEPTH_FULL_SCALE[mode], 0.0, 1.0)
                return to_uint8_rgb(arr)
            if mode == "F":
                return to_uint8_rgb(np.asarray(im, dtype=np.float32))
            if mode != "RGB":
                im = im.convert("RGB")  # L, LA, P, PA, RGBA, CMYK, YCbCr, LAB, 1
            return to_uint8_rgb(np.asarray(im))
    except UnidentifiedImageError as e:
        raise InputFileError(f"cannot read {str(path)!r}: not an image format Pillow recognises") from e
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data, permission problems
        raise InputFileError(f"cannot read image {str(path)!r}: {e}") from e


def write_image(path: PathLike, image, *, quality: int = 95) -> Path:
    """Write an image atomically (a temporary file in the same folder, renamed when complete).

    Args:
        path: output file; the format comes from the suffix (``.png``, ``.jpg``, ...).
        image: anything :func:`to_uint8_rgb` accepts (``(H, W, 3)`` uint8, float in ``[0, 1]``, a
            ``(1, H, W, C)`` tensor ...). Alpha is not written.
        quality: JPEG / WebP quality (ignored by lossless formats).

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: bad image, or a suffix Pillow cannot write (the message names both).
    """
    from PIL import Image

    path = Path(path)
    arr = to_uint8_rgb(image)
    ext = path.suffix.lower()
    if ext not in Image.registered_extensions():
        raise ValueError(f"cannot write {str(path)!r}: unknown image suffix {path.suffix!r}")
    params = {"quality": int(quality)} if ext in (".jpg", ".jpeg", ".webp") else {}
    with atomic_write(path) as tmp:
        Image.fromarray(arr).save(tmp, **params)
    return path


def image_to_tensor(image, *, dtype: torch.dtype = torch.float32,
                    device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """Images as a ``(B, H, W, 3)`` float tensor in ``[0, 1]``.

    Args:
        image: one image (anything :func:`to_uint8_rgb` accepts), or a ``(B, H, W, C)`` uint8 array / tensor
            (``C`` = 1, 3 or 4). Float tensors shaped ``(B, H, W, 3)`` are returned as they are (cast to
            ``dtype``/``device``, values not checked).
        dtype: floating dtype of the result.
        device: device of the result (default: the input tensor's device, else CPU).
    """
    if not dtype.is_floating_point:
        raise ValueError(f"image_to_tensor: dtype must be floating point, got {dtype}")
    if isinstance(image, torch.Tensor) and image.is_floating_point() and image.ndim == 4 and image.shape[-1] == 3:
        return image.to(dtype=dtype, device=device if device is not None else image.device)
    if (isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4 and image.shape[0] != 1):
        arr = np.stack([to_uint8_rgb(im) for im in image])
    else:
        arr = to_uint8_rgb(image)[None]
    return torch.from_numpy(arr).to(device=device if device is not None else "cpu").to(dtype) / 255.0


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """A float ``(B, H, W, C)`` / ``(H, W, C)`` tensor in ``[0, 1]`` to uint8 RGB numpy.

    Returns ``(H, W, 3)`` for an unbatched input or ``B = 1``, else ``(B, H, W, 3)``. Values are clipped to
    ``[0, 1]`` and rounded; gradients are not tracked.
    """
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"tensor_to_image expects a torch tensor, got {type(tensor).__name__}")
    if tensor.ndim == 4 and tensor.shape[0] > 1:
        return np.stack([to_uint8_rgb(t) for t in tensor])
    return to_uint8_rgb(tensor)


__all__ = ["read_image", "write_image", "to_uint8_rgb", "image_to_tensor", "tensor_to_image"]
