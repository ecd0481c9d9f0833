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


class UsageError(FaceRenderError, ValueError):
    """A command-line argument or an API argument that cannot be used (out of range, inconsistent with another,
    NaN): the message names the argument and what was received. ``facerender`` exits with 2 (docs/errors.md)."""


class InputFileError(FaceRenderError, ValueError):
    """An input file that exists but cannot be used: empty, truncated, corrupt, a folder where a file is expected,
    the wrong kind of file (the message names the file and the cause). ``facerender`` exits with 3."""


class OutputError(FaceRenderError, OSError):
    """An output that cannot be written: a read-only or full location, a file where a folder is expected, an
    unknown suffix (the message names the path and the cause); checked before any work starts where possible.
    ``facerender`` exits with 4."""


__all__ = [
    "FaceRenderError",
    "BackendUnavailableError",
    "NoFaceError",
    "VideoError",
    "AudioError",
    "FittingError",
    "UsageError",
    "InputFileError",
    "OutputError",
    "FaceModelError",
    "ModelFileError",
    "ModelNotInstalledError",
    "ShapeError",
]
