"""Typed errors of the neural renderers (subclasses of :class:`facerender.errors.FaceRenderError`, so the
``facerender`` command reports them in one line). Every message states what was received and what to do."""
from __future__ import annotations

from facerender.errors import FaceRenderError


class TrainingError(FaceRenderError, RuntimeError):
    """A training run cannot start or continue (bad run folder, mismatched configuration, ...)."""


class TrainingDivergedError(TrainingError):
    """A loss or a gradient became NaN / inf (or exceeded the configured limit); the last good checkpoint is kept."""


class CheckpointError(FaceRenderError, ValueError):
    """A checkpoint is missing, corrupt, or belongs to another method, resolution or configuration."""

    exit_code = 3  # an input problem (docs/errors.md)


class DatasetError(FaceRenderError, ValueError):
    """A dataset cannot be built: a track that does not match its video, too few frames for the split, ..."""

    exit_code = 3  # an input problem (docs/errors.md)


__all__ = ["TrainingError", "TrainingDivergedError", "CheckpointError", "DatasetError"]
