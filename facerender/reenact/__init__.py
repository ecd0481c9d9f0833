"""Face reenactment (``docs/reenactment.md``): the source video's expressions (and head pose) on the target video.

* :func:`face2face` - Face2Face: tracking both videos, expression transfer, rendering, compositing; no training;
* :func:`dvp` - Deep Video Portraits from a run of ``neural_renderers.train_dvp`` (``neural_renderers.dvp``,
  imported on first use: facerender does not import the neural renderers at import time).

    >>> import facerender
    >>> res = facerender.reenact.face2face("source.mp4", "target.mp4", "out/face2face")   # doctest: +SKIP
    >>> res.result_path, res.side_by_side_path

Image-space building blocks: :mod:`facerender.reenact.reproject` (colouring the re-rendered face from the current
target frame), :mod:`facerender.reenact.blend` (seamless compositing), :mod:`facerender.reenact.mouth` (the
target's mouth-interior database and retrieval). Names are imported on first use.
"""
from morphable_models._lazy import attach

_EXPORTS = {
    "face2face": ".face2face", "Face2FaceConfig": ".face2face", "Face2FaceResult": ".face2face",
    "dvp": "neural_renderers.dvp:dvp_reenact", "DVPReenactConfig": "neural_renderers.dvp",
    "DVPReenactResult": "neural_renderers.dvp",
    "seamless_blend": ".blend", "BlendConfig": ".blend", "SeamlessBlender": ".blend", "poisson_blend": ".blend",
    "multiband_blend": ".blend", "alpha_blend": ".blend", "color_transfer": ".blend",
    "reproject_frame": ".reproject", "recolor": ".reproject", "RecolorConfig": ".reproject",
    "MouthDatabase": ".mouth", "MouthConfig": ".mouth",
    "frame_schedule": ".common", "transfer_expression": ".common", "actor_neutral": ".common",
}

_SUBMODULES = ("blend", "cli", "common", "mouth", "reproject")

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS, _SUBMODULES)
