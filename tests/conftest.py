"""Shared fixtures: sample data (skip locally when missing, FAIL when CI is set), the ICT model, devices, dtypes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from morphable_models.paths import shared_data_dir

IN_CI = bool(os.environ.get("CI"))

# Per-dtype tolerances used by comparisons across the suite.
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-9, atol=1e-10)}

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def missing_data(what: str):
    """Skip (locally) or fail (when the CI variable is set) because sample data is missing."""
    msg = (f"sample data missing: {what}. Set FACERENDER_DATA or place 'shared' beside the repository "
           f"(see README).")
    if IN_CI:
        pytest.fail(msg + " CI is set, so missing data is an error.")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        missing_data("the shared data folder")
    return d


@pytest.fixture(scope="session")
def faces_dir(shared_dir) -> Path:
    d = shared_dir / "data" / "faces"
    if not d.is_dir():
        missing_data(str(d))
    return d


@pytest.fixture(scope="session")
def video_dir(shared_dir) -> Path:
    d = shared_dir / "data" / "video"
    if not d.is_dir():
        missing_data(str(d))
    return d


@pytest.fixture(scope="session")
def ict_archive(shared_dir) -> Path:
    p = shared_dir / "models" / "ict-facekit" / "ICT-FaceKit.tar.xz"
    if not p.is_file():
        missing_data(str(p))
    return p


@pytest.fixture(scope="session")
def ict_home(ict_archive, tmp_path_factory) -> Path:
    """A cache root holding the converted ICT model.

    Uses $FACERENDER_HOME (or ~/.cache/facerender) when it already holds the model, else installs it once into a
    temporary folder for this test session.
    """
    from morphable_models import ict

    if ict.is_installed():
        return ict.cache_dir().parent.parent
    home = tmp_path_factory.mktemp("facerender_home")
    ict.install_ict(ict_archive, home=home, progress=False)
    return home


@pytest.fixture(scope="session")
def ict_model(ict_home):
    """The full ICT model (float32, CPU, the 53 fitting expressions). Do not modify it."""
    from morphable_models import load_ict

    return load_ict(ict_home)


@pytest.fixture(scope="session")
def ict_face_model(ict_model):
    """The ICT face-area sub-model (9,409 vertices, 18,460 triangles)."""
    return ict_model.submodel("face")


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request) -> torch.dtype:
    return request.param
