"""facerender: differentiable rendering of 3D morphable face models, fitting, tracking and face reenactment.

One import per task (``docs/api.md``; names are imported on first use, so ``import facerender`` is fast and imports
neither torch nor numpy)::

    import facerender
    model = facerender.load_model()                           # ICT-FaceKit (after 'facerender model install')
    fit = facerender.fit_image(model, "photo.jpg")            # landmarks + photometric fit -> FitResult
    out = facerender.render(model, fit, background="photo.jpg")   # RenderOutput, out.image (1, H, W, 3)
    track = facerender.track_video("video.mp4", "out/track", model)
    res = facerender.reenact.face2face("source.mp4", "target.mp4", "out/f2f", model)   # or .dvp(run, ...)
    ev = facerender.evaluate("source.mp4", "target.mp4", res.result_path)

Sub-packages (also imported on first use, no side effects on import):
  * :mod:`facerender.cameras` - pinhole / orthographic cameras in one pixel convention;
  * :mod:`facerender.render` - rasterizer backends, interpolation, textures, SH lighting, conditioning renders;
  * :mod:`facerender.landmarks` - landmark files, detectors, NME;
  * :mod:`facerender.fitting` - energies and the batched Gauss-Newton solver, single-image fitting;
  * :mod:`facerender.tracking` - video tracking; :mod:`facerender.reenact` - Face2Face (and DVP);
  * :mod:`facerender.metrics`, :mod:`facerender.identity` - evaluation; :mod:`facerender.audio` - speech features;
  * :mod:`facerender.io` - images, video and meshes;
  * :mod:`facerender.cli` - the ``facerender`` command.
"""
from .errors import (
    AudioError,
    BackendUnavailableError,
    FaceRenderError,
    FittingError,
    InputFileError,
    ModelFileError,
    ModelNotInstalledError,
    NoFaceError,
    OutputError,
    ShapeError,
    UsageError,
    VideoError,
)

__version__ = "0.1.0"

from morphable_models._lazy import attach as _attach  # noqa: E402

_EXPORTS = {
    # models
    "load_model": "morphable_models.store", "load_ict": "morphable_models.ict",
    "install_ict": "morphable_models.ict", "LinearFaceModel": "morphable_models.linear",
    # rendering: facerender.render (the sub-package) is callable, see below
    "render_face": ".render.renderer", "FaceRenderer": ".render.renderer", "RenderOutput": ".render.renderer",
    "frame_face": ".render.renderer", "conditioning_maps": ".render.conditioning",
    "PinholeCamera": ".cameras", "OrthographicCamera": ".cameras",
    # fitting, tracking, reenactment, evaluation
    "fit_image": ".fitting.fit_image", "FitConfig": ".fitting.fit_image", "FitResult": ".fitting.fit_image",
    "track_video": ".tracking.video", "TrackConfig": ".tracking.video", "TrackResult": ".tracking.video",
    "load_track": ".tracking.trackfile", "Track": ".tracking.trackfile",
    "evaluate": ".metrics.video", "EvaluateConfig": ".metrics.video",
    # images and landmarks
    "read_image": ".io.image", "write_image": ".io.image", "detect_landmarks": ".landmarks.detect",
    "read_landmarks": ".landmarks.files",
    # threads (the CLI's --threads and its default)
    "set_threads": ".threads", "default_threads": ".threads",
}

_SUBMODULES = ("audio", "cameras", "cli", "cli_support", "errors", "fitting", "identity", "io", "landmarks",
               "metrics", "model_cli", "pipelines", "reenact", "render", "threads", "tracking")

__getattr__, __dir__, _all = _attach(__name__, _EXPORTS, _SUBMODULES, extra=(
    "AudioError", "BackendUnavailableError", "FaceRenderError", "FittingError", "InputFileError", "ModelFileError",
    "ModelNotInstalledError", "NoFaceError", "OutputError", "ShapeError", "UsageError", "VideoError"))
#: Public names; ``render`` and ``reenact`` are the callable / function-holding sub-packages.
__all__ = sorted(_all + ["render", "reenact"])
