"""End-to-end pipelines behind the ``facerender`` command (each also usable from Python).

* :mod:`facerender.pipelines.render_model` - ``render_expressions`` (``facerender render``) and
  ``render_conditioning_montage``: pictures of the default model with expressions and of its conditioning maps.
"""
from .render_model import render_conditioning_montage, render_expressions

__all__ = ["render_expressions", "render_conditioning_montage"]
