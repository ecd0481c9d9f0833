"""Typed errors of the morphable-model core. Every message states what was received."""
from __future__ import annotations


class FaceModelError(Exception):
    """Base class of errors raised by :mod:`morphable_models`."""


class ShapeError(FaceModelError, ValueError):
    """A tensor has the wrong shape, dtype or device, or holds NaN/inf values."""


class ModelFileError(FaceModelError, ValueError):
    """A model file or archive is missing, truncated, corrupt or inconsistent (the message names the file)."""


class ModelNotInstalledError(FaceModelError, FileNotFoundError):
    """The requested model is not in the cache; the message says how to install it."""
