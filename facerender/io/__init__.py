"""Images, video and audio, and atomic writes.

* :mod:`facerender.io.image` - ``read_image`` / ``write_image`` and the conversions between numpy ``(H, W, 3)``
  uint8 RGB and torch ``(B, H, W, C)`` float images;
* :mod:`facerender.io.video` - PyAV streaming ``VideoReader``, ``VideoWriter`` (H.264 + AAC), ``read_audio``
  (PyAV is imported on first use; the extra is ``video``);
* :mod:`facerender.io.atomic` - ``atomic_write``: every output goes through a temporary file and a rename.
"""
from .atomic import atomic_write
from .image import image_to_tensor, read_image, tensor_to_image, to_uint8_rgb, write_image
from .video import Frame, VideoInfo, VideoReader, VideoWriter, read_audio

__all__ = [
    "atomic_write",
    "read_image",
    "write_image",
    "to_uint8_rgb",
    "image_to_tensor",
    "tensor_to_image",
    "VideoReader",
    "VideoWriter",
    "VideoInfo",
    "Frame",
    "read_audio",
]
