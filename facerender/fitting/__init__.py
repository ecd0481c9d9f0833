"""Fitting a face model to photos (``docs/fitting.md``): :func:`fit_image` (landmarks, then the photometric
refinement) and its :class:`FitConfig` / :class:`FitResult`, the landmark stage (:func:`fit_landmarks`), FLAME /
multilinear fits by re-linearisation (:func:`fit_image_relinearized`), the batched Gauss-Newton /
Levenberg-Marquardt solver (:func:`solve`) and the per-vertex albedo.

    >>> import facerender
    >>> model = facerender.load_model()                      # doctest: +SKIP
    >>> fit = facerender.fit_image(model, "photo.jpg")       # = facerender.fitting.fit_image
    >>> out = facerender.render(model, fit, background="photo.jpg")

Names are imported on first use (importing this package does not import torch).
"""
from morphable_models._lazy import attach

_EXPORTS = {
    "fit_image": ".fit_image", "FitConfig": ".fit_image", "FitResult": ".fit_image", "crop_face": ".fit_image",
    "fit_landmarks": ".landmark_fit", "LandmarkFitConfig": ".landmark_fit", "LandmarkFitResult": ".landmark_fit",
    "check_landmarks": ".landmark_fit", "default_focal": ".landmark_fit",
    "fit_image_relinearized": ".relinearize", "fit_landmarks_relinearized": ".relinearize",
    "RelinearizedFit": ".relinearize", "is_nonlinear": ".relinearize",
    "solve": ".solver", "gauss_newton": ".solver", "GaussNewtonConfig": ".solver", "AdamConfig": ".solver",
    "LeastSquaresProblem": ".solver", "SolverResult": ".solver", "SolverStatus": ".solver", "RobustLoss": ".solver",
    "Block": ".params", "ParameterLayout": ".params",
    "EnergyProblem": ".energies", "LandmarkTerm": ".energies", "PriorTerm": ".energies",
    "PhotometricTerm": ".photometric",
    "AlbedoConfig": ".albedo", "VertexAlbedoEstimator": ".albedo", "estimate_vertex_albedo": ".albedo",
    "write_fit_outputs": ".cli",
}

_SUBMODULES = ("albedo", "cli", "energies", "landmark_fit", "landmark_np", "orientation", "params", "photometric",
               "relinearize", "solver", "solver_np")

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS, _SUBMODULES)
