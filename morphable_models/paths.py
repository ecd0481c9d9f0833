"""Where facerender keeps its cache and where it finds the shared sample data.

* ``FACERENDER_HOME`` (default ``~/.cache/facerender``): converted model files, one folder per model.
* ``FACERENDER_DATA`` (default ``../shared`` beside the repository, when that folder exists): the sample data
  (ICT-FaceKit archive, annotated photos, videos). It is only used by tests, examples and the CLI's defaults.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, os.PathLike]


def facerender_home(home: Optional[PathLike] = None) -> Path:
    """Return the cache root: ``home`` if given, else ``$FACERENDER_HOME``, else ``~/.cache/facerender``."""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get("FACERENDER_HOME")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/facerender").expanduser()


def repository_root() -> Path:
    """The folder that holds the ``morphable_models`` package (the repository root for a source checkout)."""
    return Path(__file__).resolve().parent.parent


def shared_data_dir(required: bool = False) -> Optional[Path]:
    """Locate the shared sample data.

    Order: ``$FACERENDER_DATA``; ``../shared`` beside the repository root; ``../shared`` beside the current
    directory. Returns ``None`` when none exists (or raises ``FileNotFoundError`` when ``required``).
    """
    candidates = []
    env = os.environ.get("FACERENDER_DATA")
    if env:
        candidates.append(Path(env).expanduser())
    candidates.append(repository_root().parent / "shared")
    candidates.append(Path.cwd().parent / "shared")
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    if required:
        raise FileNotFoundError(
            "facerender sample data not found: set FACERENDER_DATA or place the 'shared' folder beside the "
            f"repository (looked in: {', '.join(str(c) for c in candidates)})"
        )
    return None
