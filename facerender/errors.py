"""Typed errors of facerender. Every message states what was received."""
from __future__ import annotations

from morphable_models.errors import FaceModelError, ModelFileError, ModelNotInstalledError, ShapeError


class FaceRenderError(Exception):
    """Base class of facerender's own errors."""


class BackendUnavailableError(FaceRenderError, ImportError):
    """An optional backend (PyTorch3D, nvdiffrast, MediaPipe, dlib, PyAV ...) is not installed or cannot run here.

    The message names the extra to install, e.g. ``pip install "facerender[nvdiffrast]"``.
    """


class NoFaceError(FaceRenderError, ValueError):
    """No face was found where one was required (the message names the image and the detector settings)."""


class VideoError(FaceRenderError, ValueError):
    """A video cannot be read or written (the message names the file)."""


class AudioError(VideoError):
    """Audio that cannot serve as speech input: no audio stream, an unusable sample rate, non-finite samples (the
    message names the file or argument and what was received). A :class:`VideoError`, so existing handlers catch it."""


class FittingError(FaceRenderError, RuntimeError):
    """A fit could not run (e.g. too few landmarks); numerical trouble is flagged on the result instead."""


__all__ = [
    "FaceRenderError",
    "BackendUnavailableError",
    "NoFaceError",
    "VideoError",
    "AudioError",
    "FittingError",
    "FaceModelError",
    "ModelFileError",
    "ModelNotInstalledError",
    "ShapeError",
]
