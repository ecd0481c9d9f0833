"""The resumable chunk store of :func:`~facerender.tracking.video.track_video` (``DIR/.track/``): JSON manifest,
per-chunk ``.npz`` arrays and tracker states, every file written atomically."""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from ..io.atomic import atomic_write
from ..io.video import VideoReader
from .trackfile import FORMAT_VERSION

__all__ = ["STATE_DIR"]

#: Name of the chunk store inside the output folder.
STATE_DIR = ".track"


def _jsonable(obj):
    if is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON: NaN / inf become null
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)



def _pack(obj, arrays: Dict[str, np.ndarray], prefix: str = "s"):
    """A JSON tree of ``obj`` with numpy arrays / tensors moved into ``arrays`` (referenced by key)."""
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        key = f"{prefix}_{len(arrays)}"
        arrays[key] = np.array(obj)
        return {"__array__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_pack(k, arrays, prefix), _pack(v, arrays, prefix)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {("__tuple__" if isinstance(obj, tuple) else "__list__"): [_pack(v, arrays, prefix) for v in obj]}
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in the tracking state")


def _unpack(tree, arrays):
    if isinstance(tree, dict):
        if "__array__" in tree:
            return np.array(arrays[tree["__array__"]])
        if "__dict__" in tree:
            return {_unpack(k, arrays): _unpack(v, arrays) for k, v in tree["__dict__"]}
        if "__tuple__" in tree:
            return tuple(_unpack(v, arrays) for v in tree["__tuple__"])
        if "__list__" in tree:
            return [_unpack(v, arrays) for v in tree["__list__"]]
        if "__float__" in tree:
            return float(tree["__float__"])
    return tree


def _write_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _write_json(path: Path, obj) -> None:
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False)
    with atomic_write(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


class _Store:
    """The resumable chunk store ``DIR/.track/``: ``manifest.json``, ``video.npz`` (bundling), ``chunk_NNNNNN.npz``
    (per-frame arrays) and ``state_NNNNNN.npz`` (trackers after that chunk; only the newest is kept)."""

    def __init__(self, out_dir: Path):
        self.dir = out_dir / STATE_DIR
        self.manifest_path = self.dir / "manifest.json"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def clear(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def create(self, manifest: dict) -> None:
        self.clear()
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.manifest_path, manifest)

    def read_manifest(self) -> Optional[dict]:
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write_manifest(self, manifest: dict) -> None:
        _write_json(self.manifest_path, manifest)

    def write_video(self, arrays: Dict[str, np.ndarray]) -> None:
        _write_npz(self.dir / "video.npz", arrays)

    def read_video(self) -> Dict[str, np.ndarray]:
        with np.load(self.dir / "video.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def chunk_path(self, k: int) -> Path:
        return self.dir / f"chunk_{k:06d}.npz"

    def state_path(self, k: int) -> Path:
        return self.dir / f"state_{k:06d}.npz"

    def write_chunk(self, k: int, arrays: Dict[str, np.ndarray], state: dict) -> None:
        _write_npz(self.chunk_path(k), arrays)
        packed: Dict[str, np.ndarray] = {}
        tree = _pack(state, packed)
        packed["__tree__"] = np.array(json.dumps(tree))
        _write_npz(self.state_path(k), packed)

    def rewrite_chunk(self, k: int, arrays: Dict[str, np.ndarray]) -> None:
        """Replace chunk ``k``'s arrays (atomically; its state file is left as it is)."""
        _write_npz(self.chunk_path(k), arrays)

    def read_chunk(self, k: int) -> Dict[str, np.ndarray]:
        with np.load(self.chunk_path(k), allow_pickle=False) as z:
            return {key: z[key] for key in z.files}

    def read_chunk_key(self, k: int, key: str) -> np.ndarray:
        with np.load(self.chunk_path(k), allow_pickle=False) as z:
            return z[key]

    def read_state(self, k: int) -> dict:
        with np.load(self.state_path(k), allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
        return _unpack(json.loads(str(arrays.pop("__tree__"))), arrays)

    def drop_state(self, k: int) -> None:
        try:
            self.state_path(k).unlink()
        except OSError:
            pass


def _fingerprint(video: Path, reader: VideoReader) -> dict:
    st = video.stat()
    return {"path": str(video.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
            "size": list(reader.size), "fps": reader.fps}


def _settings_hash(config, max_frames, model) -> str:
    blob = json.dumps({"config": _jsonable(config), "max_frames": max_frames,
                       "model": [getattr(model, "name", "?"), int(getattr(model, "num_expression", 0)),
                                 int(getattr(model, "num_identity", 0))], "version": FORMAT_VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
