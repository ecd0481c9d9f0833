"""Checkpoints of the shared trainer: plain state dicts and tensors (no pickled objects), written atomically.

A checkpoint is a dict saved by ``torch.save`` and read with ``weights_only=True``::

    {"format": "facerender-train", "version": 1, "method": "dvp", "signature": {...}, "config": {...},
     "step": int, "epoch": int, "batch_in_epoch": int,
     "networks": {name: state_dict}, "optimizers": {phase: state_dict}, "schedulers": {phase: state_dict},
     "scaler": state_dict | None, "rng": {"torch": ByteTensor, "cuda": [ByteTensor], "numpy": {...},
     "python": [...]}, "elapsed_s": float}

Writing goes through :func:`facerender.io.atomic.atomic_write` (temporary file, fsync, rename): a crash or a full
disk while saving leaves the previous checkpoint as it was.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from facerender.io.atomic import atomic_write

from ..errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["save_checkpoint", "load_checkpoint", "check_compatible", "rng_state", "set_rng_state", "FORMAT",
           "VERSION"]

FORMAT = "facerender-train"
VERSION = 1


def rng_state() -> Dict[str, Any]:
    """Every random-number state a run uses (torch CPU / CUDA, NumPy's global, Python's ``random``)."""
    np_state = np.random.get_state()
    py = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": [py[0], list(py[1]), py[2]],
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s output."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def save_checkpoint(path: Union[str, Path], payload: Dict[str, Any]) -> Path:
    """Write ``payload`` (see the module docstring; ``format`` / ``version`` are added) atomically to ``path``.

    Raises:
        OSError: the write failed (disk full, read-only folder ...); the previous file at ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "version": VERSION, **payload}
    with atomic_write(path) as tmp:
        torch.save(data, tmp)
    return path


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device, None] = "cpu"
                    ) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only``: nothing is unpickled but tensors
    and plain containers).

    Raises:
        CheckpointError: no such file, a truncated / corrupt file, or not a facerender training checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r} (train first: 'facerender train METHOD ... -o RUN')")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint (corrupt or truncated: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); delete it to train "
                              f"from scratch or use another checkpoint") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a facerender training checkpoint "
                              f"(format {data.get('format') if isinstance(data, dict) else type(data).__name__!r})")
    if int(data.get("version", -1)) > VERSION:
        raise CheckpointError(f"{str(path)!r} has checkpoint version {data.get('version')}, newer than this "
                              f"facerender's ({VERSION}); upgrade facerender")
    for key in ("method", "signature", "step", "networks"):
        if key not in data:
            raise CheckpointError(f"{str(path)!r} lacks {key!r}: not a complete facerender checkpoint")
    data["path"] = str(path)
    return data


def check_compatible(data: Dict[str, Any], method: str, signature: Dict[str, Any]) -> None:
    """Refuse a checkpoint of another method or with another signature (resolution, window, widths ...).

    Raises:
        CheckpointError: naming the checkpoint's method / the differing settings.
    """
    where = data.get("path", "the checkpoint")
    if data["method"] != method:
        raise CheckpointError(f"{where} is a {data['method']!r} checkpoint, not {method!r}")
    theirs = data["signature"]
    diff = {k: (theirs.get(k), v) for k, v in signature.items() if _norm(theirs.get(k)) != _norm(v)}
    if diff:
        txt = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(f"{where} was trained with other settings ({txt})")


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def latest_step_file(folder: Path) -> Optional[Path]:
    """The numbered checkpoint with the highest step in ``folder`` (None if none)."""
    files = sorted(folder.glob("step_*.pt"))
    return files[-1] if files else None
