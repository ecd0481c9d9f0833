"""facerender: differentiable rendering of 3D morphable face models, fitting, tracking and face reenactment.

Sub-packages (imported on demand, no side effects on import):
  * :mod:`facerender.cameras` - pinhole / orthographic cameras in one pixel convention;
  * :mod:`facerender.render` - rasterizer backends, interpolation, textures, SH lighting, conditioning renders;
  * :mod:`facerender.landmarks` - landmark files, detectors, NME;
  * :mod:`facerender.fitting` - energies and the batched Gauss-Newton solver, single-image fitting;
  * :mod:`facerender.io` - images, video and meshes;
  * :mod:`facerender.cli` - the ``facerender`` command.
"""
from .errors import (
    BackendUnavailableError,
    FaceRenderError,
    FittingError,
    ModelFileError,
    ModelNotInstalledError,
    NoFaceError,
    ShapeError,
    VideoError,
)

__version__ = "0.1.0"
