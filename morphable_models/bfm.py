"""Basel Face Model loaders: BFM 2009 (``01_MorphableModel.mat``), BFM 2017 (``model2017-1_*.h5``) and
Deep3DFaceRecon's cropped ``BFM_model_front.mat``, with expression add-ons for BFM 2009.

What each file holds (verified against the reference loaders, see docs/models.md):

* **BFM 2009** ``01_MorphableModel.mat`` (MATLAB v5, read with ``scipy.io.loadmat``; v7.3/HDF5 copies through
  h5py): ``shapeMU (3N, 1)`` mean in **micrometres** (Deep3DFaceRecon divides by 1e5 to get decimetres),
  ``shapePC (3N, K)`` orthonormal basis, ``shapeEV (K, 1)`` **standard deviations** (eos squares them to get
  eigenvalues), ``texMU``/``texPC``/``texEV`` the same for per-vertex colour in **0..255**, ``tl (F, 3)`` triangles
  with **1-based** indices wound **clockwise** seen from outside (eos swaps two corners). N = 53,490, K = 199.
  BFM 2009 has no expressions: an add-on basis is given with ``expression=`` (Guo et al.'s ``Exp_Pca.bin`` as used by
  Deep3DFaceRecon, with ``std_exp.txt`` and ``BFM_exp_idx.mat`` beside it, or a ``.npz``, see
  :func:`read_expression_basis`).
* **BFM 2017** ``model2017-1_*.h5`` (HDF5, h5py): ``shape|color|expression/model/{mean (3N,), pcaBasis (3N, K)
  orthonormal, pcaVariance (K,) variances, noiseVariance}``, ``shape/representer/points (3, N)`` and ``cells (3, F)``
  **0-based**, positions in **millimetres**, colour in 0..1. The expression model's mean is added to the shape mean
  (as eos's ``get_mean`` does).
* **Deep3DFaceRecon** ``BFM_model_front.mat``: ``meanshape (1, 3N)`` in **decimetres**, ``idBase (3N, 80)`` and
  ``exBase (3N, 64)`` already scaled by their standard deviations, ``meantex``/``texBase`` in 0..255, ``tri (F, 3)``
  and ``keypoints (68,)`` **1-based**, ``frontmask2_idx`` (1-based, the photometric face area).

All loaders return a :class:`~morphable_models.linear.LinearFaceModel` in centimetres with standard-normal
coefficients (bases scaled by their standard deviations), PCA expressions bounded to +-``expression_bound``
standard deviations, and the landmark sets and regions the pipelines need (the model's own where given, else
derived from ICT-FaceKit: :mod:`morphable_models.correspondence`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .correspondence import complete_annotations
from .errors import ModelFileError
from .format_utils import (
    as_triangles,
    check_finite,
    orient_outward,
    read_eos_contours,
    read_eos_landmark_mapping,
    require_keys,
    unit_scale,
)
from .landmarks import IBUG68_LABELS, LandmarkEmbedding
from .linear import LinearFaceModel
from .paths import PathLike
from .regions import Region

log = logging.getLogger(__name__)

BFM2009_KEYS = ("shapeMU", "shapePC", "shapeEV", "tl")
BFM2009_TEXTURE_KEYS = ("texMU", "texPC", "texEV")
BFM2017_KEYS = ("shape/model/mean", "shape/model/pcaBasis", "shape/model/pcaVariance", "shape/representer/cells")
BFM_FRONT_KEYS = ("meanshape", "idBase", "exBase", "tri", "keypoints")
BFM_LICENSE = ("Basel Face Model (University of Basel): used under the licence agreement its user accepted when "
               "downloading it; the converted copy is bound by the same agreement and must not be redistributed")
DEFAULT_EXPRESSION_BOUND = 4.0


def _require_h5py(where: str):
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is in the 'models' extra
        raise ModelFileError(f"{where}: reading HDF5 files needs h5py: pip install 'facerender[models]' "
                             f"({e})") from None
    return h5py


def read_mat(path: PathLike) -> Dict[str, np.ndarray]:
    """Read a MATLAB file: v5/v7 with ``scipy.io.loadmat``, v7.3 (HDF5) with h5py (arrays transposed back to MATLAB's
    row/column order). Returns ``{name: array}`` without MATLAB's ``__header__`` entries."""
    import scipy.io

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such file")
    try:
        d = scipy.io.loadmat(str(p))
        return {k: v for k, v in d.items() if not k.startswith("__")}
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        h5py = _require_h5py(str(p))
        out = {}
        try:
            with h5py.File(p, "r") as f:
                for k, v in f.items():
                    if isinstance(v, h5py.Dataset):
                        out[k] = np.asarray(v).T
        except OSError as e:
            raise ModelFileError(f"{p}: corrupt or truncated MATLAB v7.3 (HDF5) file ({e})") from None
        return out
    except (ValueError, TypeError, OSError, EOFError) as e:
        raise ModelFileError(f"{p}: not a readable MATLAB .mat file, or truncated ({type(e).__name__}: {e})") from None


def _column(a: np.ndarray, where: str, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise ModelFileError(f"{where}: {name} must be a vector, got shape {a.shape}")
    return a


def _basis(pc: np.ndarray, dim: int, K: Optional[int], where: str, name: str) -> np.ndarray:
    pc = np.asarray(pc)
    if pc.ndim != 2:
        raise ModelFileError(f"{where}: {name} must be a (3N, K) matrix, got shape {pc.shape}")
    if pc.shape[0] != dim and pc.shape[1] == dim:
        pc = pc.T
    if pc.shape[0] != dim:
        raise ModelFileError(f"{where}: {name} has {pc.shape[0]} rows, expected 3N = {dim} (from the mean)")
    return pc if K is None else pc[:, :K]


def _pca(mean, pc, sd, K, where, label, scale: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """(mean (N, 3) float64, basis (K, N, 3) float32 scaled by the std devs) from a mean (3N,), an orthonormal basis
    (3N, K) and standard deviations (K,), all multiplied by ``scale`` (the unit conversion). The basis is formed in
    float32 (the files' precision): one copy, not three float64 ones (BFM 2009: 128 MB instead of ~1 GB peak)."""
    mean = _column(mean, where, f"{label} mean").astype(np.float64)
    if mean.size % 3:
        raise ModelFileError(f"{where}: {label} mean has {mean.size} entries, not a multiple of 3")
    pc = _basis(pc, mean.size, None, where, f"{label} basis")
    sd = _column(sd, where, f"{label} standard deviations").astype(np.float64)
    if sd.size != pc.shape[1]:
        raise ModelFileError(f"{where}: {label} has {pc.shape[1]} basis vectors but {sd.size} standard deviations")
    if np.any(sd < 0):
        raise ModelFileError(f"{where}: {label} standard deviations contain negative values")
    k = pc.shape[1] if K is None else min(int(K), pc.shape[1])
    check_finite(mean, where, f"{label} mean")
    basis = np.empty((k, mean.size), dtype=np.float32)
    np.multiply(np.asarray(pc[:, :k], dtype=np.float32).T, (sd[:k] * scale).astype(np.float32)[:, None], out=basis)
    check_finite(basis, where, f"{label} basis")
    return mean.reshape(-1, 3) * scale, basis.reshape(k, -1, 3)


# ------------------------------------------------------------------------------------------------------------------
# expression add-ons for BFM 2009


def read_expression_basis(path: PathLike, num_vertices: int, *, unit: str = "um", std: Optional[PathLike] = None,
                          vertex_index: Optional[PathLike] = None, K: Optional[int] = None
                          ) -> Tuple[np.ndarray, np.ndarray, Sequence[str]]:
    """Read an expression basis for a BFM-2009 mesh.

    Formats:
        * Guo et al.'s ``Exp_Pca.bin`` (Deep3DFaceRecon's BFM folder): int32 ``K``, float32 mean ``(3n,)`` (not used,
          as in Deep3DFaceRecon), float32 basis ``K x 3n`` (component-major); with ``std_exp.txt`` (K standard
          deviations) and ``BFM_exp_idx.mat`` (``trimIndex``, 1-based BFM vertex of each of the n basis vertices),
          looked up beside the file when not given. Units: those of BFM 2009 (micrometres).
        * ``.npz`` with ``basis`` ``(3N, K)`` or ``(K, N, 3)``, optional ``std (K,)`` (default 1: already scaled),
          ``names (K,)``, ``unit`` (default ``unit``) and ``vertex_ids (n,)`` 0-based when the basis covers only
          part of the mesh.
    Returns:
        ``(basis (K, num_vertices, 3) in centimetres, scaled by the standard deviations, std (K,) = 1, names)``;
        vertices not covered have zero deltas.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such expression basis file")
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise ModelFileError(f"{p}: not a readable .npz ({e})") from None
        require_keys(list(d), ["basis"], str(p), "expression basis (.npz)")
        b = np.asarray(d["basis"], dtype=np.float64)
        vid = np.asarray(d["vertex_ids"], dtype=np.int64) if "vertex_ids" in d else None
        n = len(vid) if vid is not None else num_vertices
        if b.ndim == 2 and b.shape[0] == 3 * n:
            b = b.T.reshape(-1, n, 3)
        if b.ndim != 3 or b.shape[1:] != (n, 3):
            raise ModelFileError(f"{p}: basis must be (3n, K) or (K, n, 3) for n = {n}, got {b.shape}")
        sd = np.asarray(d["std"], dtype=np.float64).reshape(-1) if "std" in d else np.ones(b.shape[0])
        names = [str(s) for s in d["names"]] if "names" in d else None
        scale = unit_scale(str(d["unit"]) if "unit" in d else unit, str(p))
    else:
        raw = p.read_bytes()
        if len(raw) < 8:
            raise ModelFileError(f"{p}: truncated ({len(raw)} bytes)")
        Kf = int(np.frombuffer(raw[:4], dtype="<i4")[0])
        nfloat = (len(raw) - 4) // 4
        if Kf <= 0 or (len(raw) - 4) % 4 or nfloat % (3 * (Kf + 1)):
            raise ModelFileError(f"{p}: not an Exp_Pca.bin file: header says {Kf} components but the file has "
                                 f"{len(raw)} bytes (expected 4 + 4 * 3n * (K + 1)); truncated?")
        n = nfloat // (3 * (Kf + 1))
        data = np.frombuffer(raw, dtype="<f4", offset=4)
        b = data[3 * n:].reshape(Kf, n, 3).astype(np.float64)
        std = Path(std) if std is not None else p.with_name("std_exp.txt")
        if not std.is_file():
            raise ModelFileError(f"{p}: needs its standard deviations (std_exp.txt); not found at {std}")
        try:
            sd = np.loadtxt(std, dtype=np.float64).reshape(-1)
        except ValueError as e:
            raise ModelFileError(f"{std}: not a list of numbers ({e})") from None
        if sd.size != Kf:
            raise ModelFileError(f"{std}: {sd.size} standard deviations for the {Kf} components of {p.name}")
        vid = None
        if n != num_vertices:
            vi = Path(vertex_index) if vertex_index is not None else p.with_name("BFM_exp_idx.mat")
            if not vi.is_file():
                raise ModelFileError(f"{p}: the basis covers {n} vertices, the model has {num_vertices}; needs the "
                                     f"vertex index (BFM_exp_idx.mat with 'trimIndex'), not found at {vi}")
            m = read_mat(vi)
            require_keys(list(m), ["trimIndex"], str(vi), "BFM_exp_idx.mat")
            vid = _column(m["trimIndex"], str(vi), "trimIndex").astype(np.int64) - 1
        names = None
        scale = unit_scale(unit, str(p))
    if vid is not None:
        if vid.size != b.shape[1]:
            raise ModelFileError(f"{p}: {vid.size} vertex ids for a basis over {b.shape[1]} vertices")
        if vid.min() < 0 or vid.max() >= num_vertices:
            raise ModelFileError(f"{p}: vertex ids {vid.min()}..{vid.max()} outside 0..{num_vertices - 1} (the "
                                 f"index file must be 1-based)")
    if sd.size != b.shape[0]:
        raise ModelFileError(f"{p}: {sd.size} standard deviations for {b.shape[0]} components")
    k = b.shape[0] if K is None else min(int(K), b.shape[0])
    full = np.zeros((k, num_vertices, 3))
    scaled = b[:k] * sd[:k, None, None] * scale
    if vid is None:
        full[:] = scaled
    else:
        full[:, vid] = scaled
    check_finite(full, str(p), "expression basis")
    names = list(names[:k]) if names is not None else [f"expression{i:03d}" for i in range(k)]
    return full, np.ones(k), names


# ------------------------------------------------------------------------------------------------------------------
# shared construction


def _landmark_files(num_vertices: int, landmarks: Optional[PathLike], contours: Optional[PathLike]):
    partial = read_eos_landmark_mapping(landmarks, num_vertices) if landmarks is not None else None
    cont = read_eos_contours(contours, num_vertices) if contours is not None else None
    return partial, cont


def _build(where: str, name: str, mean: np.ndarray, faces: np.ndarray, id_basis: np.ndarray,
           ex_basis: Optional[np.ndarray], ex_names: Optional[Sequence[str]], albedo_mean, albedo_basis, *,
           dtype: torch.dtype, expression_bound: float, landmarks=None, ibug_partial=None, contours=None,
           regions=None, home=None, ict_model=None, meta: Optional[dict] = None) -> LinearFaceModel:
    faces, flipped = orient_outward(mean, faces, where)
    lms, regs, info = complete_annotations(mean, faces, where=where, landmarks=landmarks, ibug_partial=ibug_partial,
                                           contours=contours, regions=regions, ict_model=ict_model, home=home)
    K_ex = 0 if ex_basis is None else ex_basis.shape[0]
    extra = {"source_file": where, "annotations": info, "winding_flipped": flipped, **(meta or {})}
    return LinearFaceModel(
        mean.astype(np.float32), faces, id_basis.astype(np.float32, copy=False),
        None if ex_basis is None else ex_basis.astype(np.float32, copy=False),
        identity_names=[f"identity{k:03d}" for k in range(id_basis.shape[0])],
        expression_names=ex_names, expression_kind="pca",
        expression_lower=np.full(K_ex, -expression_bound), expression_upper=np.full(K_ex, expression_bound),
        albedo_mean=None if albedo_mean is None else np.clip(albedo_mean, 0, 1).astype(np.float32),
        albedo_basis=None if albedo_basis is None else albedo_basis.astype(np.float32, copy=False),
        landmarks=lms, regions=regs, name=name, license=BFM_LICENSE, units="cm", dtype=dtype, extra=extra,
    )


# ------------------------------------------------------------------------------------------------------------------
# BFM 2009


def load_bfm2009(
    path: PathLike,
    *,
    expression: Optional[PathLike] = None,
    landmarks: Optional[PathLike] = None,
    contours: Optional[PathLike] = None,
    n_identity: Optional[int] = None,
    n_expression: Optional[int] = None,
    n_albedo: Optional[int] = None,
    expression_bound: float = DEFAULT_EXPRESSION_BOUND,
    dtype: torch.dtype = torch.float32,
    home: Optional[PathLike] = None,
    ict_model=None,
) -> LinearFaceModel:
    """Load the Basel Face Model 2009 (``01_MorphableModel.mat``).

    Args:
        path: the ``.mat`` file.
        expression: optional expression add-on (:func:`read_expression_basis`).
        landmarks, contours: eos's ``ibug_to_bfm.txt`` and ``bfm2009_model_contours.json`` when available (else the
            68 points and jaw polylines are derived by registering ICT-FaceKit, see docs/models.md).
        n_identity, n_expression, n_albedo: keep the first components only (default all).
        expression_bound: PCA expression coefficients are bounded to +- this many standard deviations.
    Returns:
        a :class:`LinearFaceModel` (cm, standard-normal coefficients, albedo in [0, 1]).
    Raises:
        ModelFileError: wrong file, missing keys, wrong shapes, 0-based ``tl``, NaN values.
    """
    p = Path(path)
    where = str(p)
    d = read_mat(p)
    require_keys(list(d), BFM2009_KEYS, where, "BFM 2009 (01_MorphableModel.mat)")
    mean, id_basis = _pca(d["shapeMU"], d["shapePC"], d["shapeEV"], n_identity, where, "shape", unit_scale("um"))
    N = mean.shape[0]
    faces = as_triangles(d["tl"], N, 1, where, "tl")
    faces = faces[:, [0, 2, 1]]  # BFM 2009 winds clockwise seen from outside (eos swaps two corners)
    alb_mean = alb_basis = None
    if all(k in d for k in BFM2009_TEXTURE_KEYS):
        alb_mean, alb_basis = _pca(d["texMU"], d["texPC"], d["texEV"], n_albedo, where, "texture", 1 / 255.0)
        if alb_mean.shape[0] != N:
            raise ModelFileError(f"{where}: texMU has {alb_mean.shape[0]} vertices, shapeMU {N}")
    ex_basis = ex_names = None
    if expression is not None:
        ex_basis, _, ex_names = read_expression_basis(expression, N, unit="um", K=n_expression)
    partial, cont = _landmark_files(N, landmarks, contours)
    return _build(where, "bfm2009", mean, faces, id_basis, ex_basis, ex_names, alb_mean, alb_basis, dtype=dtype,
                  expression_bound=expression_bound, ibug_partial=partial, contours=cont, home=home,
                  ict_model=ict_model, meta={"format": "bfm2009", "file_units": "um",
                                             "expression_file": str(expression) if expression else None})


# ------------------------------------------------------------------------------------------------------------------
# BFM 2017


def _h5_keys(f) -> list:
    out = []
    f.visit(lambda k: out.append(k))
    return out


def load_bfm2017(
    path: PathLike,
    *,
    landmarks: Optional[PathLike] = None,
    contours: Optional[PathLike] = None,
    n_identity: Optional[int] = None,
    n_expression: Optional[int] = None,
    n_albedo: Optional[int] = None,
    expression_bound: float = DEFAULT_EXPRESSION_BOUND,
    dtype: torch.dtype = torch.float32,
    home: Optional[PathLike] = None,
    ict_model=None,
) -> LinearFaceModel:
    """Load the Basel Face Model 2017 (``model2017-1_bfm_nomouth.h5``, ``model2017-1_face12_nomouth.h5``, ...).

    Variances are converted to standard deviations; positions from millimetres to centimetres; the expression
    model's mean is added to the shape mean. ``landmarks``/``contours``: eos's ``ibug_to_bfm2017-1_bfm_nomouth.txt``
    and ``bfm2017-1_bfm_nomouth_model_contours.json`` when available. Other arguments as :func:`load_bfm2009`.
    """
    p = Path(path)
    where = str(p)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such file")
    h5py = _require_h5py(where)
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise ModelFileError(f"{p}: not a readable HDF5 file, or truncated ({e})") from None
    try:
        keys = _h5_keys(f)
        require_keys(keys, BFM2017_KEYS, where, "BFM 2017 (HDF5)")

        def arr(k):
            try:
                return np.asarray(f[k])
            except (OSError, KeyError, TypeError) as e:
                raise ModelFileError(f"{where}: cannot read {k} ({e}); truncated?") from None

        def pca(group, K, scale):
            var = _column(arr(f"{group}/model/pcaVariance"), where, f"{group}/model/pcaVariance").astype(np.float64)
            if np.any(var < -1e-9):
                raise ModelFileError(f"{where}: {group}/model/pcaVariance has negative entries: these are variances "
                                     f"(not standard deviations) and must be >= 0")
            return _pca(arr(f"{group}/model/mean"), arr(f"{group}/model/pcaBasis"), np.sqrt(np.clip(var, 0, None)),
                        K, where, group, scale)

        mm = unit_scale("mm")
        mean, id_basis = pca("shape", n_identity, mm)
        N = mean.shape[0]
        faces = as_triangles(arr("shape/representer/cells"), N, 0, where, "shape/representer/cells")
        if "shape/representer/points" in keys:
            pts = arr("shape/representer/points")
            if pts.size != 3 * N:
                raise ModelFileError(f"{where}: shape/representer/points has {pts.size // 3} points, the model {N}")
        ex_basis = ex_names = None
        if "expression/model/pcaBasis" in keys:
            ex_mean, ex_basis = pca("expression", n_expression, mm)
            if ex_mean.shape[0] != N:
                raise ModelFileError(f"{where}: the expression model has {ex_mean.shape[0]} vertices, shape {N}")
            mean = mean + ex_mean
            ex_names = [f"expression{k:03d}" for k in range(ex_basis.shape[0])]
        alb_mean = alb_basis = None
        if "color/model/pcaBasis" in keys:
            alb_mean, alb_basis = pca("color", n_albedo, 1.0)
            if alb_mean.shape[0] != N:
                raise ModelFileError(f"{where}: the colour model has {alb_mean.shape[0]} vertices, shape {N}")
            if alb_mean.max() > 2.0:  # some conversions store 0..255
                alb_mean, alb_basis = alb_mean / 255.0, alb_basis / np.float32(255.0)
        lm_json = None
        if "metadata/landmarks/json" in keys:
            raw = arr("metadata/landmarks/json")
            raw = raw.reshape(-1)[0] if raw.shape else raw[()]
            lm_json = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    finally:
        f.close()
    partial, cont = _landmark_files(N, landmarks, contours)
    meta = {"format": "bfm2017", "file_units": "mm"}
    if lm_json:
        try:
            meta["bfm_landmarks"] = [str(e.get("id")) for e in json.loads(lm_json)]
        except (ValueError, AttributeError):
            pass
    return _build(where, "bfm2017", mean, faces, id_basis, ex_basis, ex_names, alb_mean, alb_basis, dtype=dtype,
                  expression_bound=expression_bound, ibug_partial=partial, contours=cont, home=home,
                  ict_model=ict_model, meta=meta)


# ------------------------------------------------------------------------------------------------------------------
# Deep3DFaceRecon's BFM_model_front.mat


def load_bfm_front(
    path: PathLike,
    *,
    n_identity: Optional[int] = None,
    n_expression: Optional[int] = None,
    n_albedo: Optional[int] = None,
    expression_bound: float = DEFAULT_EXPRESSION_BOUND,
    dtype: torch.dtype = torch.float32,
    home: Optional[PathLike] = None,
    ict_model=None,
) -> LinearFaceModel:
    """Load Deep3DFaceRecon's ``BFM_model_front.mat`` (BFM 2009 cropped to the front face, 35,709 vertices, with
    Guo et al.'s 64 expression components and 68 ``keypoints``). Decimetres -> centimetres; ``frontmask2_idx``
    becomes the ``face`` region (the area Deep3DFaceRecon's photometric loss uses)."""
    p = Path(path)
    where = str(p)
    d = read_mat(p)
    require_keys(list(d), BFM_FRONT_KEYS, where, "Deep3DFaceRecon BFM_model_front.mat")
    mean = _column(d["meanshape"], where, "meanshape").astype(np.float64)
    if mean.size % 3:
        raise ModelFileError(f"{where}: meanshape has {mean.size} entries, not a multiple of 3")
    N = mean.size // 3
    scale = unit_scale("dm")
    mean = mean.reshape(N, 3) * scale
    id_basis = _basis(d["idBase"], 3 * N, n_identity, where, "idBase").T.reshape(-1, N, 3) * scale
    ex_basis = _basis(d["exBase"], 3 * N, n_expression, where, "exBase").T.reshape(-1, N, 3) * scale
    for a, n in ((mean, "meanshape"), (id_basis, "idBase"), (ex_basis, "exBase")):
        check_finite(a, where, n)
    faces = as_triangles(d["tri"], N, 1, where, "tri")
    kp = _column(d["keypoints"], where, "keypoints").astype(np.int64)
    if kp.size != 68:
        raise ModelFileError(f"{where}: keypoints has {kp.size} entries, expected 68")
    if kp.min() < 1 or kp.max() > N:
        raise ModelFileError(f"{where}: keypoints {kp.min()}..{kp.max()} outside 1..{N} (they are 1-based)")
    lms = {"ibug68": LandmarkEmbedding.from_vertices("ibug68", kp - 1, IBUG68_LABELS)}
    regions = {}
    if "frontmask2_idx" in d:
        fm = _column(d["frontmask2_idx"], where, "frontmask2_idx").astype(np.int64) - 1
        if fm.min() < 0 or fm.max() >= N:
            raise ModelFileError(f"{where}: frontmask2_idx outside 1..{N}")
        regions["face"] = Region.from_vertices("face", fm, faces, "Deep3DFaceRecon frontmask2_idx")
    alb_mean = alb_basis = None
    if "meantex" in d and "texBase" in d:
        alb_mean = _column(d["meantex"], where, "meantex").astype(np.float64).reshape(N, 3) / 255.0
        alb_basis = _basis(d["texBase"], 3 * N, n_albedo, where, "texBase").T.reshape(-1, N, 3) / 255.0
    return _build(where, "bfm-front", mean, faces, id_basis, ex_basis,
                  [f"expression{k:03d}" for k in range(ex_basis.shape[0])], alb_mean, alb_basis, dtype=dtype,
                  expression_bound=expression_bound, landmarks=lms, regions=regions, home=home, ict_model=ict_model,
                  meta={"format": "bfm-front", "file_units": "dm"})
