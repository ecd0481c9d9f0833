"""Evaluation of reenactment outputs: identity (CSIM), expression, pose (P_T), image (PSNR / SSIM) and temporal
(seam flicker, faceless frames) figures, as pure functions and one video-level :func:`evaluate`.

    >>> from facerender.metrics import evaluate
    >>> ev = evaluate("source.mp4", "target.mp4", "result.mp4")      # or the CLI: facerender evaluate ...
    >>> print(ev.table())

See docs/evaluation.md. Importing this package does not import dlib.
"""
from __future__ import annotations

from morphable_models._lazy import attach as _attach

_EXPORTS = {
    "psnr": "image",
    "ssim": "image",
    "csim": "identity",
    "identity_distance": "identity",
    "interocular": "landmarks",
    "lip_opening": "landmarks",
    "pearson": "landmarks",
    "pose_error": "landmarks",
    "align_scale_shift": "landmarks",
    "ExpressionFit": "expression",
    "fit_expressions": "expression",
    "blendshape_distance": "expression",
    "neutral_relative": "expression",
    "action_units": "expression",
    "au_agreement": "expression",
    "SeamConfig": "temporal",
    "SeamFlicker": "temporal",
    "SeamMeter": "temporal",
    "seam_flicker": "temporal",
    "EvaluateConfig": "video",
    "Evaluation": "video",
    "evaluate": "video",
    "match_frames": "video",
}


__getattr__, __dir__, __all__ = _attach(__name__, {k: "." + v for k, v in _EXPORTS.items()})
