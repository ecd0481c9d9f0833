"""One entry point for every face-model format: detect, load, summarise, convert into the cache.

``load_model(spec)`` accepts

* ``None`` or ``"ict-facekit"``: the installed ICT-FaceKit (:func:`~morphable_models.ict.load_ict`);
* a name converted earlier (``facerender model convert FILE --name NAME``): ``$FACERENDER_HOME/models/NAME/``;
* a file, its format detected from its content: BFM 2009 / Deep3DFaceRecon ``.mat``, BFM 2017 ``.h5``, FLAME
  ``.pkl``, eos ``.bin`` (Surrey), a cache folder or its ``model.npz``.

and returns a :class:`~morphable_models.linear.LinearFaceModel` (BFM, Surrey, converted linear models, ICT), a
:class:`~morphable_models.flame.FlameModel` or a :class:`~morphable_models.multilinear.TuckerFaceModel`. The last two
are not linear in their coefficients; :func:`as_linear` gives the :class:`LinearFaceModel` that fitting, tracking,
rendering and reenactment consume (their ``linearize`` at the neutral point).

**Cache format** (``save_model``): ``$FACERENDER_HOME/models/<name>/`` with ``model.npz`` (uncompressed NumPy arrays:
float32 geometry, int64 indices, landmark sets and regions), ``meta.json`` (``format``: ``linear`` | ``flame`` |
``multilinear``, names, units, bounds, provenance, what was derived) and ``LICENSE`` (the source's licence notice).
It is written into a temporary sibling folder and renamed: a failed conversion leaves no partial model.
"""
from __future__ import annotations

import json
import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from .errors import ModelFileError, ModelNotInstalledError
from .landmarks import LandmarkEmbedding
from .linear import LinearFaceModel
from .paths import PathLike, facerender_home
from .regions import Region

log = logging.getLogger(__name__)

STORE_VERSION = 1
FORMATS = ("ict-facekit", "bfm2009", "bfm2017", "bfm-front", "flame", "eos", "cache")
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def models_dir(home: Optional[PathLike] = None) -> Path:
    """``$FACERENDER_HOME/models``."""
    return facerender_home(home) / "models"


def check_name(name: str) -> str:
    if not name or not set(name) <= _NAME_OK or name.startswith("."):
        raise ValueError(f"model name must use letters, digits, '-', '_', '.', and not start with '.', got {name!r}")
    return name


# ------------------------------------------------------------------------------------------------------------------
# format detection


def detect_format(path: PathLike) -> str:
    """The format of a model file or folder, from its content (not only its extension).

    Returns one of ``bfm2009``, ``bfm-front``, ``bfm2017``, ``flame``, ``eos``, ``eos-blendshapes``, ``cache``,
    ``ict-facekit``. Raises :class:`ModelFileError` naming what was found otherwise.
    """
    p = Path(path)
    if p.is_dir():
        meta = p / "meta.json"
        if meta.is_file():
            try:
                m = json.loads(meta.read_text())
            except ValueError as e:
                raise ModelFileError(f"{meta}: not valid JSON ({e})") from None
            return "ict-facekit" if m.get("model") == "ict-facekit" and "format" not in m else "cache"
        raise ModelFileError(f"{p}: a folder without meta.json: not a converted model (convert a model file with "
                             f"'facerender model convert FILE --name NAME'; install ICT-FaceKit with "
                             f"'facerender model install ict-facekit --from {p}')")
    if not p.is_file():
        raise ModelFileError(f"{p}: no such file or folder")
    with open(p, "rb") as f:
        head = f.read(512)
    if len(head) < 8:
        raise ModelFileError(f"{p}: {len(head)} bytes: empty or truncated")
    if head.startswith(b"MATLAB"):
        import scipy.io

        try:
            names = [n for n, _, _ in scipy.io.whosmat(str(p))]
        except NotImplementedError:  # MATLAB v7.3 = HDF5 with a 512-byte header
            from .bfm import _h5_keys, _require_h5py

            h5py = _require_h5py(str(p))
            try:
                with h5py.File(p, "r") as f:
                    names = _h5_keys(f)
            except OSError as e:
                raise ModelFileError(f"{p}: a MATLAB v7.3 file that cannot be read ({e}); truncated?") from None
        except (ValueError, TypeError, OSError) as e:
            raise ModelFileError(f"{p}: a MATLAB file that cannot be read ({e}); truncated?") from None
        if "shapeMU" in names:
            return "bfm2009"
        if "meanshape" in names and "idBase" in names:
            return "bfm-front"
        raise ModelFileError(f"{p}: a MATLAB file with {', '.join(sorted(names)[:12])}: neither BFM 2009 "
                             f"(shapeMU, shapePC, shapeEV, tl) nor Deep3DFaceRecon's BFM_model_front.mat")
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "bfm2017"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(p) as z:
                names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
        except zipfile.BadZipFile as e:
            raise ModelFileError(f"{p}: corrupt zip/npz ({e})") from None
        if (p.parent / "meta.json").is_file():
            return "cache"
        raise ModelFileError(f"{p}: a .npz ({', '.join(names[:8])}) without meta.json beside it: not a converted "
                             f"model")
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):
        return "flame"
    version = int(np.frombuffer(head[:4], "<u4")[0])
    if 1 <= version <= 4:
        return "eos"
    if head[4:8] == b"\0\0\0\0" and 0 < int(np.frombuffer(head[:8], "<u8")[0]) < 1 << 16:
        return "eos-blendshapes"
    raise ModelFileError(f"{p}: unknown model format (starts with {head[:16]!r}); supported: BFM 2009 / "
                         f"Deep3DFaceRecon .mat, BFM 2017 .h5, FLAME .pkl, eos/Surrey .bin, converted models")


# ------------------------------------------------------------------------------------------------------------------
# loading


def _resolve(spec: Optional[PathLike], home: Optional[PathLike]) -> Tuple[str, Optional[Path]]:
    """``(format, path)`` of a model spec (``None``/name/path)."""
    if spec is None or str(spec) == "ict-facekit":
        return "ict-facekit", None
    s = str(spec)
    p = Path(s).expanduser()
    if p.exists():
        return detect_format(p), p
    if set(s) <= _NAME_OK and os.sep not in s:
        d = models_dir(home) / s
        if (d / "meta.json").is_file():
            return "cache", d
        have = sorted(x.name for x in models_dir(home).glob("*") if (x / "meta.json").is_file()) \
            if models_dir(home).is_dir() else []
        raise ModelNotInstalledError(f"no model named {s!r} in {models_dir(home)} (have: {', '.join(have) or 'none'});"
                                     f" pass a model file, or convert one with 'facerender model convert FILE "
                                     f"--name {s}'")
    raise ModelFileError(f"{p}: no such file or folder")


#: Companion files looked up beside a model file when not given: {format: {loader option: file name patterns}}.
COMPANIONS = {
    "bfm2009": {"expression": ("Exp_Pca.bin",), "landmarks": ("ibug_to_bfm.txt",),
                "contours": ("bfm2009_model_contours.json",)},
    "bfm2017": {"landmarks": ("ibug_to_bfm2017*.txt",), "contours": ("bfm2017*model_contours.json",)},
    "eos": {"landmarks": ("ibug_to_sfm.txt",), "contours": ("sfm_model_contours.json", "model_contours.json"),
            "blendshapes": ("expression_blendshapes*.bin",)},
}


def _companions(fmt: str, path: Path) -> dict:
    """Companion files beside ``path`` (eos mappings and contours, BFM 2009's expression add-on), logged."""
    out = {}
    for option, patterns in COMPANIONS.get(fmt, {}).items():
        for pat in patterns:
            hits = sorted(path.parent.glob(pat))
            if hits:
                out[option] = hits[0]
                log.info("%s: using %s beside it as %s", path, hits[0].name, option)
                break
    return out


def load_model(spec: Optional[PathLike] = None, *, home: Optional[PathLike] = None,
               dtype: torch.dtype = torch.float32, **options):
    """Load a face model of any supported format (see the module docstring).

    Args:
        spec: None / ``"ict-facekit"``, a converted model's name, or a path.
        options: forwarded to the format's loader (e.g. ``expression=`` for BFM 2009, ``landmarks=``,
            ``contours=``, ``blendshapes=``, ``masks=``, ``n_identity=``, ``n_expression=``).
    Returns:
        LinearFaceModel, FlameModel or TuckerFaceModel.
    """
    fmt, path = _resolve(spec, home)
    if fmt == "ict-facekit":
        from .ict import load_ict

        if path is not None:
            home = path.parent.parent
        return load_ict(home, dtype=dtype, **{k: v for k, v in options.items() if k in ("expressions", "region")})
    if fmt == "cache":
        return load_saved(path if path.is_dir() else path.parent, dtype=dtype)
    kw = dict(_companions(fmt, path), **options, dtype=dtype, home=home)
    if fmt == "bfm2009":
        from .bfm import load_bfm2009

        return load_bfm2009(path, **kw)
    if fmt == "bfm-front":
        from .bfm import load_bfm_front

        return load_bfm_front(path, **kw)
    if fmt == "bfm2017":
        from .bfm import load_bfm2017

        return load_bfm2017(path, **kw)
    if fmt == "flame":
        from .flame import load_flame

        return load_flame(path, **kw)
    if fmt == "eos":
        from .surrey import load_surrey

        return load_surrey(path, **kw)
    if fmt == "eos-blendshapes":
        raise ModelFileError(f"{path}: an eos blendshape file, not a model: pass the model (.bin) and this file as "
                             f"its blendshapes (--blendshapes {path})")
    raise ModelFileError(f"{path}: unsupported format {fmt!r}")  # pragma: no cover


def as_linear(model) -> LinearFaceModel:
    """The :class:`LinearFaceModel` the pipelines consume: the model itself, or the linearisation of an articulated
    (FLAME) or multilinear model at its neutral point."""
    if isinstance(model, LinearFaceModel):
        return model
    if hasattr(model, "linearize"):
        return model.linearize()
    raise TypeError(f"expected a face model, got {type(model).__name__}")


# ------------------------------------------------------------------------------------------------------------------
# the cache format


def _np(x) -> Optional[np.ndarray]:
    if x is None:
        return None
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _annotations(arrays: dict, meta: dict, landmarks: Dict[str, LandmarkEmbedding], regions: Dict[str, Region]):
    meta["landmarks"], meta["regions"] = {}, {}
    for i, (k, lm) in enumerate(landmarks.items()):
        arrays[f"lm{i}_ids"] = lm.vertex_ids.astype(np.int64)
        arrays[f"lm{i}_w"] = lm.weights.astype(np.float64)
        meta["landmarks"][k] = {"key": f"lm{i}", "labels": list(lm.labels) if lm.labels else None}
    for i, (k, r) in enumerate(regions.items()):
        arrays[f"rg{i}_v"] = r.vertex_ids.astype(np.int64)
        arrays[f"rg{i}_f"] = r.face_ids.astype(np.int64)
        meta["regions"][k] = {"key": f"rg{i}", "description": r.description}


def _read_annotations(arrays: dict, meta: dict) -> Tuple[Dict[str, LandmarkEmbedding], Dict[str, Region]]:
    lms = {k: LandmarkEmbedding(k, arrays[v["key"] + "_ids"], arrays[v["key"] + "_w"],
                                tuple(v["labels"]) if v.get("labels") else None)
           for k, v in meta.get("landmarks", {}).items()}
    regs = {k: Region(k, arrays[v["key"] + "_v"], arrays[v["key"] + "_f"], v.get("description", ""))
            for k, v in meta.get("regions", {}).items()}
    return lms, regs


def _jsonable(x, depth: int = 0):
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, dict) and depth < 4:
        out = {str(k): _jsonable(v, depth + 1) for k, v in x.items() if isinstance(k, str)}
        return {k: v for k, v in out.items() if v is not _SKIP}
    if isinstance(x, (list, tuple)) and depth < 4 and len(x) <= 256:
        out = [_jsonable(v, depth + 1) for v in x]
        return _SKIP if any(v is _SKIP for v in out) else out
    if isinstance(x, np.ndarray) and x.size <= 512:
        return x.tolist()
    return _SKIP


_SKIP = object()


def model_arrays(model) -> Tuple[Dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` of a model in the cache format (see the module docstring)."""
    from .flame import FlameModel
    from .multilinear import TuckerFaceModel

    arrays: Dict[str, np.ndarray] = {}
    meta: dict = {"store_version": STORE_VERSION, "name": model.name, "license": model.license, "units": "cm",
                  "axes": "x subject's left, y up, z towards the viewer",
                  "extra": _jsonable({k: v for k, v in model.extra.items()
                                      if isinstance(k, str) and k not in ("cache_dir", "linearized_at")})}
    if isinstance(model, LinearFaceModel):
        meta.update(format="linear", identity_names=list(model.identity_names),
                    expression_names=list(model.expression_names), expression_kind=model.expression_kind)
        for k in ("template", "faces", "identity_basis", "expression_basis", "identity_std", "expression_std",
                  "expression_lower", "expression_upper", "albedo_mean", "albedo_basis", "albedo_std", "uvs",
                  "faces_uv"):
            v = _np(getattr(model, k))
            if v is not None:
                arrays[k] = v
        V = model.num_vertices
        arrays["identity_basis"] = arrays["identity_basis"].reshape(-1, V, 3)
        arrays["expression_basis"] = arrays["expression_basis"].reshape(-1, V, 3)
        if "albedo_basis" in arrays:
            arrays["albedo_basis"] = arrays["albedo_basis"].reshape(-1, V, 3)
    elif isinstance(model, FlameModel):
        V = model.num_vertices
        meta.update(format="flame", parents=list(model.parents), expression_bound=model.expression_bound)
        arrays.update(v_template=_np(model.v_template), shapedirs=_np(model.shapedirs), exprdirs=_np(model.exprdirs),
                      posedirs=_np(model.posedirs).T.reshape(V, 3, -1), J_regressor=_np(model.J_regressor),
                      lbs_weights=_np(model.lbs_weights), faces=_np(model.faces))
    elif isinstance(model, TuckerFaceModel):
        meta.update(format="multilinear", expression_bound=model.expression_bound,
                    expression_row_names=list(model.expression_row_names))
        for k in ("vertex_factor", "core", "identity_mean", "identity_scale", "expression_mean", "expression_scale",
                  "faces", "uvs", "faces_uv", "identity_rows", "expression_rows", "expression_lower",
                  "expression_upper"):
            v = _np(getattr(model, k))
            if v is not None:
                arrays[k] = v
    else:
        raise TypeError(f"cannot store a {type(model).__name__}")
    _annotations(arrays, meta, model.landmarks, model.regions)
    for k, v in list(arrays.items()):
        if v.dtype.kind == "f" and not k.startswith("lm"):
            arrays[k] = v.astype(np.float32)
        elif v.dtype.kind in "iu":
            arrays[k] = v.astype(np.int64)
    return arrays, meta


def save_model(model, name: str, home: Optional[PathLike] = None, *, source: Optional[str] = None,
               license_text: Optional[str] = None, overwrite: bool = True) -> Path:
    """Write ``model`` into ``$FACERENDER_HOME/models/<name>/`` (atomic: temporary folder, then rename).

    Returns the folder. Raises ``FileExistsError`` when it exists and ``overwrite`` is False.
    """
    from .ict import _write_cache

    dest = models_dir(home) / check_name(name)
    if name == "ict-facekit":
        raise ValueError("'ict-facekit' is reserved for the installed ICT-FaceKit; choose another name")
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} exists")
    arrays, meta = model_arrays(model)
    check_arrays(arrays, f"{source or model.name} (converting to {name!r})")
    meta["cache_name"] = name
    meta["source"] = source
    notice = license_text or (model.license + "\n")
    _write_cache(dest, arrays, meta, notice)
    return dest


def load_saved(folder: PathLike, *, dtype: torch.dtype = torch.float32):
    """Load a model written by :func:`save_model`."""
    from .flame import FlameModel
    from .multilinear import TuckerFaceModel

    d = Path(folder)
    fix = "convert it again ('facerender model convert ... --force')"
    verify_manifest(d, fix=fix)  # size and checksums before reading (a few KB)
    try:
        meta = json.loads((d / "meta.json").read_text())
        with np.load(d / "model.npz", allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, KeyError, EOFError) as e:
        raise ModelFileError(f"{d}: the converted model is unreadable ({e}); {fix}") from None
    if not verify_manifest(d, a, fix=fix):
        add_missing_manifest(d, a, str(d / "model.npz"))  # written before manifests existed
    if meta.get("store_version") != STORE_VERSION:
        raise ModelFileError(f"{d}: store version {meta.get('store_version')} != {STORE_VERSION}; convert it again")
    lms, regs = _read_annotations(a, meta)
    extra = dict(meta.get("extra") or {})
    extra["cache_dir"] = str(d)
    fmt = meta.get("format")
    try:
        if fmt == "linear":
            return LinearFaceModel(
                a["template"], a["faces"], a["identity_basis"], a["expression_basis"], identity_std=a["identity_std"],
                expression_std=a["expression_std"], identity_names=meta["identity_names"],
                expression_names=meta["expression_names"], expression_kind=meta["expression_kind"],
                expression_lower=a["expression_lower"], expression_upper=a["expression_upper"],
                albedo_mean=a.get("albedo_mean"), albedo_basis=a.get("albedo_basis"), albedo_std=a.get("albedo_std"),
                uvs=a.get("uvs"), faces_uv=a.get("faces_uv"), landmarks=lms, regions=regs, name=meta["name"],
                license=meta.get("license", ""), units="cm", dtype=dtype, extra=extra)
        if fmt == "flame":
            return FlameModel(a["v_template"], a["shapedirs"], a["exprdirs"], a["posedirs"], a["J_regressor"],
                              meta["parents"], a["lbs_weights"], a["faces"], landmarks=lms, regions=regs,
                              name=meta["name"], license=meta.get("license", ""), dtype=dtype, extra=extra,
                              expression_bound=meta.get("expression_bound", 3.0))
        if fmt == "multilinear":
            return TuckerFaceModel(a["vertex_factor"], a["core"], a["identity_mean"], a["identity_scale"],
                                   a["expression_mean"], a["expression_scale"], a["faces"], uvs=a.get("uvs"),
                                   faces_uv=a.get("faces_uv"), landmarks=lms, regions=regs,
                                   identity_rows=a.get("identity_rows"), expression_rows=a.get("expression_rows"),
                                   expression_row_names=meta.get("expression_row_names", ()), name=meta["name"],
                                   license=meta.get("license", ""), dtype=dtype,
                                   expression_bound=meta.get("expression_bound", 4.0),
                                   expression_lower=a.get("expression_lower"),
                                   expression_upper=a.get("expression_upper"),
                                   extra=extra)
    except KeyError as e:
        raise ModelFileError(f"{d}: model.npz lacks {e}; convert it again") from None
    raise ModelFileError(f"{d}: unknown stored format {fmt!r}")


def convert_model(source: PathLike, name: str, home: Optional[PathLike] = None, **options) -> Path:
    """Load ``source`` (any format) and store it under ``name`` in the cache; returns the folder."""
    model = load_model(source, home=home, **options)
    return save_model(model, name, home, source=str(source))


# ------------------------------------------------------------------------------------------------------------------
# validation and the manifest (issue 19): a cache that cannot silently go bad

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
#: Largest magnitude accepted in a stored float array (model units are cm: 1e6 cm = 10 km is no face).
MAX_ABS_VALUE = 1e6
#: Vertex arrays of each stored format (their first axis counts the vertices that ``faces`` index).
_VERTEX_KEYS = ("neutral", "template", "v_template")


def check_arrays(arrays: Dict[str, np.ndarray], where: str) -> None:
    """Refuse arrays that would make a broken model: NaN anywhere, inf outside bounds arrays (``*lower*``,
    ``*upper*``, ``*bound*`` may be infinite), magnitudes above :data:`MAX_ABS_VALUE`, and face indices outside
    the vertex / UV arrays. Raises :class:`ModelFileError` naming ``where`` and the array.

    Cost: one pass over the data (about 25 ms for ICT-FaceKit's 51 MB).
    """
    for k, a in arrays.items():
        if a.dtype.kind == "f":
            if a.size == 0:
                continue
            lo, hi = float(a.min()), float(a.max())  # NaN propagates: two passes, no temporaries
            if math.isfinite(lo) and math.isfinite(hi) and max(-lo, hi) <= MAX_ABS_VALUE:
                continue
            bounds = any(t in k for t in ("lower", "upper", "bound"))
            finite = np.isfinite(a)
            if not finite.all():
                bad = ~finite if not bounds else np.isnan(a)
                if bad.any():
                    i = np.unravel_index(int(np.argmax(bad)), a.shape)
                    raise ModelFileError(f"{where}: array {k!r} {tuple(a.shape)} holds {int(bad.sum())} NaN/inf "
                                         f"value(s), the first at index {tuple(int(x) for x in i)}")
            big = np.abs(np.where(finite, a, 0)).max()
            if big > MAX_ABS_VALUE:
                i = np.unravel_index(int(np.argmax(np.abs(np.where(finite, a, 0)))), a.shape)
                raise ModelFileError(f"{where}: array {k!r} holds {float(a[i]):.3g} at index "
                                     f"{tuple(int(x) for x in i)}: implausible for a face model in cm")
    V = next((arrays[k].shape[0] for k in _VERTEX_KEYS if k in arrays), None)
    for faces, ref, n in (("faces", "vertices", V), ("faces_uv", "uvs", arrays["uvs"].shape[0] if "uvs" in arrays
                                                    else None)):
        f = arrays.get(faces)
        if f is None or n is None or f.size == 0:
            continue
        if f.ndim != 2 or f.shape[1] != 3:
            raise ModelFileError(f"{where}: array {faces!r} must be (F, 3), got {tuple(f.shape)}")
        lo, hi = int(f.min()), int(f.max())
        if lo < 0 or hi >= n:
            raise ModelFileError(f"{where}: array {faces!r} indexes [{lo}, {hi}] but there are {n} {ref}")


def _zip_members(npz: Path) -> Dict[str, dict]:
    """``{array name: {"crc": CRC-32, "bytes": size}}`` from the zip directory of a ``.npz`` (no data is read)."""
    with zipfile.ZipFile(npz) as z:
        return {i.filename[:-4] if i.filename.endswith(".npy") else i.filename: {"crc": i.CRC, "bytes": i.file_size}
                for i in z.infolist()}


def write_manifest(folder: PathLike, arrays: Dict[str, np.ndarray]) -> Path:
    """Write ``manifest.json`` beside ``model.npz`` in ``folder``: the file's size, and per array its shape, dtype
    and the CRC-32 of its member (the zip format's own checksum, which :func:`numpy.load` verifies while reading).

    Together they let :func:`verify_manifest` detect a truncated, edited or incomplete cache without reading it."""
    d = Path(folder)
    npz = d / "model.npz"
    members = _zip_members(npz)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "file": "model.npz",
        "bytes": npz.stat().st_size,
        "arrays": {k: {"shape": list(a.shape), "dtype": a.dtype.str, **members.get(k, {})}
                   for k, a in arrays.items()},
    }
    tmp = d / f".{MANIFEST}.{os.getpid()}.partial"
    try:
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, d / MANIFEST)
    finally:
        if tmp.exists():
            tmp.unlink()
    return d / MANIFEST


def add_missing_manifest(folder: PathLike, arrays: Dict[str, np.ndarray], where: str) -> None:
    """For a cache written before manifests existed: check the arrays' values (:func:`check_arrays`), then write
    its manifest so that later loads check it cheaply (skipped silently where the cache is read-only)."""
    check_arrays(arrays, where)
    try:
        write_manifest(folder, arrays)
        log.info("%s: wrote %s (a cache from before manifests)", folder, MANIFEST)
    except OSError:
        pass


def verify_manifest(folder: PathLike, arrays: Optional[Dict[str, np.ndarray]] = None, *,
                    fix: str = "reinstall it") -> bool:
    """Check a cache folder against its ``manifest.json``; returns False when there is none (a cache written before
    manifests existed; the caller then checks the arrays with :func:`check_arrays`).

    Without ``arrays``: the file size and the zip directory's per-array CRC-32 against the manifest (reads a few
    KB). With ``arrays`` (already loaded by :func:`numpy.load`, which verified each member's CRC): also their names,
    shapes and dtypes. Raises :class:`ModelFileError` naming the folder, what differs and ``fix``.
    """
    d = Path(folder)
    mp = d / MANIFEST
    if not mp.is_file():
        return False
    try:
        m = json.loads(mp.read_text())
        expected = m["arrays"]
        size = int(m["bytes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"{d}: {MANIFEST} is unreadable ({type(e).__name__}: {e}); {fix}") from None
    npz = d / "model.npz"
    actual = npz.stat().st_size if npz.is_file() else -1
    if arrays is None:
        try:
            members = _zip_members(npz)
        except (zipfile.BadZipFile, OSError) as e:
            raise ModelFileError(f"{d}: model.npz ({actual} bytes, {size} at install time) is not a readable archive "
                                 f"({e}): truncated?; {fix}") from None
        missing = sorted(set(expected) - set(members))
        if missing:
            raise ModelFileError(f"{d}: model.npz lacks {', '.join(missing[:6])}; {fix}")
        changed = sorted(k for k, v in expected.items() if "crc" in v and members[k].get("crc") != v["crc"])
        if changed:
            raise ModelFileError(f"{d}: array(s) {', '.join(changed[:6])} in model.npz differ from the manifest "
                                 f"(checksum); {fix}")
    if actual != size:
        raise ModelFileError(f"{d}: model.npz has {actual} bytes, the manifest written at install time says {size} "
                             f"(truncated or replaced); {fix}")
    if arrays is None:
        return True
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise ModelFileError(f"{d}: model.npz lacks {', '.join(missing[:6])}; {fix}")
    for k, v in expected.items():
        a = arrays[k]
        if list(a.shape) != list(v["shape"]) or a.dtype.str != v["dtype"]:
            raise ModelFileError(f"{d}: array {k!r} is {a.dtype.str} {tuple(a.shape)}, the manifest says "
                                 f"{v['dtype']} {tuple(v['shape'])}; {fix}")
    return True


# ------------------------------------------------------------------------------------------------------------------
# summaries


def summarize(model, fmt: Optional[str] = None, path: Optional[PathLike] = None) -> dict:
    """A JSON-able summary for ``facerender model info``: counts, components, units, landmark sets, regions,
    what was derived, the licence and the source."""
    from .flame import FlameModel
    from .multilinear import TuckerFaceModel

    out = {"name": model.name, "format": fmt or model.extra.get("format", type(model).__name__), "file": str(path)
           if path else model.extra.get("source_file") or model.extra.get("cache_dir"),
           "class": type(model).__name__, "vertices": model.num_vertices, "triangles": model.num_faces,
           "units": "cm (converted)", "license": model.license}
    if isinstance(model, LinearFaceModel):
        out.update(identity_components=model.num_identity, expression_components=model.num_expression,
                   expression_kind=model.expression_kind, albedo_components=model.num_albedo if model.has_albedo
                   else None, uvs=None if model.uvs is None else int(model.uvs.shape[0]),
                   expression_names=list(model.expression_names[:8]) + (["..."] if model.num_expression > 8 else []))
    elif isinstance(model, FlameModel):
        out.update(identity_components=model.num_shape, expression_components=model.num_expression,
                   joints=list(zip(("global", "neck", "jaw", "eye_left", "eye_right"), model.parents)),
                   fitter_pose_coefficients=list(model.expression_names[model.num_expression:]))
    elif isinstance(model, TuckerFaceModel):
        out.update(ranks_vertex_identity_expression=list(model.ranks), identity_components=model.num_identity,
                   expression_components=model.num_expression)
    out["landmark_sets"] = {k: len(v) for k, v in model.landmarks.items()}
    out["regions"] = {k: [r.num_vertices, r.num_faces] for k, r in model.regions.items()}
    ann = model.extra.get("annotations") or {}
    if ann:
        out["annotations"] = {"derived": ann.get("derived", []), "source": ann.get("source", {})}
        for k in ("registration_rms_cm", "snap_distance_cm"):
            if k in ann:
                out["annotations"][k] = ann[k]
    for k in ("file_units", "eos_version", "winding_flipped", "built_from"):
        if k in model.extra:
            out[k] = model.extra[k]
    return out


def model_info(spec: Optional[PathLike] = None, *, home: Optional[PathLike] = None, **options) -> dict:
    """:func:`summarize` of ``load_model(spec)`` (for ``facerender model info [MODEL]``)."""
    fmt, path = _resolve(spec, home)
    if fmt == "ict-facekit":
        from .ict import model_info as ict_info

        info = ict_info(home if path is None else path.parent.parent)
        info["format"] = "ict-facekit"
        return info
    if fmt == "eos-blendshapes":
        from .surrey import read_eos_blendshapes

        bs = read_eos_blendshapes(path)
        return {"name": path.name, "format": "eos-blendshapes", "file": str(path), "blendshapes": [n for n, _ in bs],
                "vertices": int(bs[0][1].size // 3) if bs else 0}
    model = load_model(spec, home=home, **options)
    return summarize(model, fmt, path)
