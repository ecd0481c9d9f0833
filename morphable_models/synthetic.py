"""Small model files in each supported format, written from ICT-FaceKit, for tests and benchmarks.

None of BFM, FLAME or the Surrey model may be redistributed, so the tests and ``benchmarks/bench_models.py`` write
files in each EXACT format themselves (key names, dtypes, index bases, units, winding, byte layout), from a
(decimated) ICT mesh, load them with the real loaders, and compare against the arrays written. These writers are not
converters for real use: they write ICT geometry in other formats' layouts.
"""
from __future__ import annotations

import pickle
import struct
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .landmarks import LandmarkEmbedding
from .linear import LinearFaceModel
from .paths import PathLike
from .regions import Region


# ------------------------------------------------------------------------------------------------------------------
# geometry helpers


def decimate(model: LinearFaceModel, cell: float = 1.0, region: Optional[str] = "face") -> LinearFaceModel:
    """A smaller mesh by vertex clustering: one vertex per ``cell`` (cm) grid cell (the one closest to the cell's
    mean), the landmark vertices kept. The new vertices are a subset of the old ones, so bases are exact rows;
    triangles are the old ones re-pointed to their cells' vertices (degenerate and duplicate ones dropped, winding
    kept). ``extra['parent_vertex_ids']`` maps back to ``model``."""
    sub = model.submodel(region) if region else model
    T = sub.template.detach().cpu().double().numpy()
    V = len(T)
    marked = np.unique(np.concatenate([lm.vertex_index for lm in sub.landmarks.values() if lm.is_vertex_set]
                                      or [np.zeros(0, np.int64)]))
    # the landmarks and their one-ring stay, so every landmark keeps its triangles
    F0 = sub.faces.cpu().numpy()
    ring = np.isin(F0, marked).any(1)
    protected = np.unique(np.concatenate([marked, F0[ring].reshape(-1)]))
    key = np.floor(T / cell).astype(np.int64)
    _, cell_id = np.unique(key, axis=0, return_inverse=True)
    cell_id = cell_id.reshape(-1)
    n_cells = cell_id.max() + 1
    mean = np.zeros((n_cells, 3))
    np.add.at(mean, cell_id, T)
    mean /= np.bincount(cell_id, minlength=n_cells)[:, None]
    d = np.linalg.norm(T - mean[cell_id], axis=1)
    d[protected] = -1.0  # a landmark vertex represents its cell
    order = np.lexsort((d, cell_id))
    first = np.ones(V, dtype=bool)
    first[1:] = cell_id[order][1:] != cell_id[order][:-1]
    rep_of_cell = np.full(n_cells, -1)
    rep_of_cell[cell_id[order][first]] = order[first]
    rep = rep_of_cell[cell_id]
    rep[protected] = protected
    F = rep[F0]
    ok = (F[:, 0] != F[:, 1]) & (F[:, 1] != F[:, 2]) & (F[:, 0] != F[:, 2])
    F = F[ok]
    _, uniq = np.unique(np.sort(F, axis=1), axis=0, return_index=True)
    F = F[np.sort(uniq)]
    keep = np.unique(np.concatenate([F.reshape(-1), marked]))
    new = np.full(V, -1)
    new[keep] = np.arange(keep.size)
    lms = {}
    for k, lm in sub.landmarks.items():
        if lm.is_vertex_set:
            lms[k] = LandmarkEmbedding.from_vertices(k, new[rep[lm.vertex_index]], lm.labels)
    Vn = sub.num_vertices

    def rows(b, K):
        return b.view(K, Vn, 3)[:, torch.as_tensor(keep)] if K else None

    faces = new[F]
    out = LinearFaceModel(
        sub.template[torch.as_tensor(keep)], faces, rows(sub.identity_basis, sub.num_identity),
        rows(sub.expression_basis, sub.num_expression), identity_names=sub.identity_names,
        expression_names=sub.expression_names, expression_kind=sub.expression_kind,
        expression_lower=sub.expression_lower, expression_upper=sub.expression_upper, landmarks=lms,
        regions={"face": Region("face", np.arange(keep.size), np.arange(len(faces)), "decimated face")},
        name=f"{model.name}[decimated {cell} cm]", license=model.license, dtype=model.dtype,
        extra={"parent_vertex_ids": np.asarray(sub.extra.get("parent_vertex_ids", np.arange(Vn)))[keep]},
    )
    return out


def orthonormal_pca(basis: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """A basis ``(K, V, 3)`` as an orthonormal PCA: ``pcs (3V, K)`` with orthonormal columns and ``std (K,)``
    (decreasing) spanning the same space (``basis`` rows = ``(pcs * std) @ W`` for an orthogonal ``W``)."""
    B = np.asarray(basis, dtype=np.float64).reshape(len(basis), -1).T
    U, S, _ = np.linalg.svd(B, full_matrices=False)
    return U, S


def smooth_albedo(template: np.ndarray, K: int = 4, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """A plausible per-vertex albedo: a skin colour varying smoothly with position, and ``K`` smooth colour modes
    ``(K, V, 3)`` (offsets in [0, 1] units). Test data only."""
    T = np.asarray(template, dtype=np.float64)
    x = (T - T.mean(0)) / (np.ptp(T, 0) + 1e-9)
    mean = np.clip(np.array([0.72, 0.52, 0.44]) + 0.08 * x[:, 1:2] - 0.05 * np.abs(x[:, 0:1]), 0, 1)
    rng = np.random.default_rng(seed)
    modes = []
    for k in range(K):
        w = rng.normal(size=(3, 3))
        modes.append(0.03 * np.tanh(x @ w))
    return mean, np.stack(modes) if K else np.zeros((0, len(T), 3))


# ------------------------------------------------------------------------------------------------------------------
# BFM


def write_bfm2009(path: PathLike, mean_cm: np.ndarray, pcs: np.ndarray, std_cm: np.ndarray, faces: np.ndarray,
                  tex_mean: Optional[np.ndarray] = None, tex_pcs: Optional[np.ndarray] = None,
                  tex_std: Optional[np.ndarray] = None, *, one_based: bool = True, clockwise: bool = True) -> dict:
    """Write ``01_MorphableModel.mat`` as BFM 2009 stores it: float32 micrometres, ``shapeEV`` standard deviations,
    colour 0..255, ``tl`` int32 1-based and wound clockwise (``one_based``/``clockwise`` False write the mistakes
    the loader must catch). Returns the arrays written (file units)."""
    import scipy.io

    N = len(mean_cm)
    tl = np.asarray(faces, dtype=np.int64)
    if clockwise:
        tl = tl[:, [0, 2, 1]]
    d = {"shapeMU": (np.asarray(mean_cm).reshape(-1, 1) * 1e4).astype(np.float32),
         "shapePC": np.asarray(pcs, dtype=np.float32),
         "shapeEV": (np.asarray(std_cm).reshape(-1, 1) * 1e4).astype(np.float32),
         "tl": (tl + (1 if one_based else 0)).astype(np.int32),
         "segbin": np.ones((N, 4), dtype=np.uint8)}
    if tex_mean is not None:
        d.update(texMU=(np.asarray(tex_mean).reshape(-1, 1) * 255).astype(np.float32),
                 texPC=np.asarray(tex_pcs, dtype=np.float32),
                 texEV=(np.asarray(tex_std).reshape(-1, 1) * 255).astype(np.float32))
    scipy.io.savemat(str(path), d, format="5", do_compression=False)
    return d


def write_exp_pca(folder: PathLike, basis_cm: np.ndarray, vertex_ids: np.ndarray) -> Dict[str, Path]:
    """Write Guo et al.'s expression add-on as Deep3DFaceRecon reads it: ``Exp_Pca.bin`` (int32 K, float32 mean
    ``3n`` zeros, float32 ``K x 3n`` orthonormal components, micrometres), ``std_exp.txt`` and ``BFM_exp_idx.mat``
    (``trimIndex``, 1-based). ``basis_cm (K, n, 3)`` covers the BFM vertices ``vertex_ids`` (0-based)."""
    import scipy.io

    folder = Path(folder)
    K, n, _ = basis_cm.shape
    pcs, std = orthonormal_pca(basis_cm)  # (3n, K)
    with open(folder / "Exp_Pca.bin", "wb") as f:
        f.write(struct.pack("<i", K))
        f.write(np.zeros(3 * n, dtype="<f4").tobytes())
        f.write(pcs.T.astype("<f4").tobytes())
    np.savetxt(folder / "std_exp.txt", std * 1e4)
    scipy.io.savemat(str(folder / "BFM_exp_idx.mat"), {"trimIndex": (np.asarray(vertex_ids) + 1).reshape(-1, 1)
                                                       .astype(np.int32)}, format="5")
    return {"expression": folder / "Exp_Pca.bin", "pcs": pcs, "std_cm": std}


def write_bfm2017(path: PathLike, mean_cm, pcs, std_cm, faces, *, expression=None, color=None,
                  landmarks_json: Optional[str] = None, one_based: bool = False) -> None:
    """Write ``model2017-1_*.h5`` as BFM 2017 stores it: float32 millimetres, ``pcaVariance`` variances,
    ``representer/points (3, N)`` and ``cells (3, F)`` 0-based counter-clockwise, colour in 0..1. ``expression`` and
    ``color`` are ``(mean (N, 3), pcs (3N, K), std (K,))`` (expression in cm, colour in 0..1)."""
    import h5py

    cells = (np.asarray(faces, dtype=np.int64) + (1 if one_based else 0)).T.astype(np.uint32)
    with h5py.File(path, "w") as f:
        def group(name, mean, pc, std, scale):
            f[f"{name}/model/mean"] = (np.asarray(mean).reshape(-1) * scale).astype(np.float32)
            f[f"{name}/model/pcaBasis"] = np.asarray(pc, dtype=np.float32)
            f[f"{name}/model/pcaVariance"] = ((np.asarray(std) * scale) ** 2).astype(np.float32)
            f[f"{name}/model/noiseVariance"] = np.float32(0.0)
            f[f"{name}/representer/points"] = (np.asarray(mean_cm).T * 10).astype(np.float32)
            f[f"{name}/representer/cells"] = cells
            f[f"{name}/version/majorVersion"] = np.int32(0)
            f[f"{name}/version/minorVersion"] = np.int32(9)

        group("shape", mean_cm, pcs, std_cm, 10.0)
        if expression is not None:
            group("expression", *expression, 10.0)
        if color is not None:
            group("color", *color, 1.0)
        if landmarks_json is not None:
            f["metadata/landmarks/json"] = np.array([landmarks_json.encode()], dtype=h5py.string_dtype())
        f["version/majorVersion"] = np.int32(1)
        f["version/minorVersion"] = np.int32(0)


def write_bfm_front(path: PathLike, mean_cm, id_basis_cm, ex_basis_cm, faces, keypoints, front_idx,
                    tex_mean=None, tex_basis=None) -> None:
    """Write Deep3DFaceRecon's ``BFM_model_front.mat``: decimetres, ``idBase``/``exBase`` (3N, K) already scaled by
    their standard deviations, ``tri``/``keypoints``/``frontmask2_idx`` 1-based, texture 0..255."""
    import scipy.io

    N = len(mean_cm)
    d = {"meanshape": (np.asarray(mean_cm).reshape(1, -1) / 10).astype(np.float32),
         "idBase": (np.asarray(id_basis_cm).reshape(len(id_basis_cm), -1).T / 10).astype(np.float32),
         "exBase": (np.asarray(ex_basis_cm).reshape(len(ex_basis_cm), -1).T / 10).astype(np.float32),
         "tri": (np.asarray(faces) + 1).astype(np.float64),
         "keypoints": (np.asarray(keypoints) + 1).reshape(1, -1).astype(np.float64),
         "frontmask2_idx": (np.asarray(front_idx) + 1).reshape(-1, 1).astype(np.float64),
         "point_buf": np.ones((N, 8), dtype=np.float64)}
    if tex_mean is not None:
        d["meantex"] = (np.asarray(tex_mean).reshape(1, -1) * 255).astype(np.float32)
        d["texBase"] = (np.asarray(tex_basis).reshape(len(tex_basis), -1).T * 255).astype(np.float32)
    scipy.io.savemat(str(path), d, format="5")


# ------------------------------------------------------------------------------------------------------------------
# eos / Surrey


def _eigen(v: np.ndarray) -> bytes:
    v = np.asarray(v, dtype=np.float32)
    if v.ndim == 1:
        v = v[:, None]
    return struct.pack("<ii", v.shape[0], v.shape[1]) + v.T.astype("<f4").tobytes()  # column-major


def _pca_bytes(mean, basis, eigenvalues, triangles) -> bytes:
    tri = np.asarray(triangles, dtype="<i4").reshape(-1, 3)
    return (_eigen(np.asarray(mean).reshape(-1)) + _eigen(basis) + _eigen(np.asarray(eigenvalues).reshape(-1))
            + struct.pack("<Q", len(tri)) + tri.tobytes())


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _blendshapes_bytes(shapes: Sequence[Tuple[str, np.ndarray]]) -> bytes:
    return struct.pack("<Q", len(shapes)) + b"".join(_string(n) + _eigen(np.asarray(d).reshape(-1)) for n, d in shapes)


def write_eos_model(path: PathLike, shape: Tuple, color: Optional[Tuple] = None, *, version: int = 4,
                    expression: Optional[object] = None, landmark_definitions: Optional[Mapping[str, int]] = None,
                    texture_coordinates: Optional[np.ndarray] = None,
                    texture_triangles: Optional[np.ndarray] = None) -> None:
    """Write an eos ``MorphableModel`` cereal binary archive (see :mod:`morphable_models.surrey` for the layout).

    ``shape``/``color`` = ``(mean (3N,), orthonormal basis (3N, K), eigenvalues (K,) variances, triangles (F, 3))``
    in file units; ``expression`` a PCA tuple or ``[(name, deformation (3N,))]``.
    """
    empty = (np.zeros(0), np.zeros((0, 0)), np.zeros(0), np.zeros((0, 3)))
    out = struct.pack("<I", version) + _pca_bytes(*shape) + _pca_bytes(*(color or empty))
    if version >= 2:
        if expression is None:
            out += b"\x01"
        elif isinstance(expression, tuple):
            out += b"\x00" + struct.pack("<i", 0) + _pca_bytes(*expression)
        else:
            out += b"\x00" + struct.pack("<i", 1) + _blendshapes_bytes(expression)
    if version >= 3:
        if landmark_definitions is None:
            out += b"\x01"
        else:
            out += b"\x00" + struct.pack("<Q", len(landmark_definitions)) + b"".join(
                _string(k) + struct.pack("<i", int(v)) for k, v in landmark_definitions.items())
    uv = np.zeros((0, 2)) if texture_coordinates is None else np.asarray(texture_coordinates, dtype="<f8")
    out += struct.pack("<Q", len(uv)) + uv.astype("<f8").tobytes()
    if version >= 4:
        tt = np.zeros((0, 3)) if texture_triangles is None else np.asarray(texture_triangles)
        out += struct.pack("<Q", len(tt)) + tt.astype("<i4").tobytes()
    Path(path).write_bytes(out)


def write_eos_blendshapes(path: PathLike, shapes: Sequence[Tuple[str, np.ndarray]]) -> None:
    """Write an eos blendshape file (``std::vector<Blendshape>``)."""
    Path(path).write_bytes(_blendshapes_bytes(shapes))


def write_eos_mapping(path: PathLike, mapping: Mapping[int, int], syntax: str = "toml") -> None:
    """Write an eos landmark mapping (``{iBUG point 0-based: vertex}``) in eos's TOML or older INFO syntax."""
    items = sorted(mapping.items())
    if syntax == "toml":
        text = "# synthetic mapping (test data)\n[landmark_mappings]\n" + "".join(f"{k + 1} = {v}  # point\n"
                                                                                for k, v in items)
        text += "\n[contour_landmarks]\nright = [1, 2, 3, 4, 5, 6, 7, 8]\nleft = [10, 11, 12, 13, 14, 15, 16, 17]\n"
    else:
        text = "landmarkMappings ; synthetic\n{\n" + "".join(f"\t{k + 1} {v} ; point\n" for k, v in items) + "}\n"
    Path(path).write_text(text)


def write_eos_contours(path: PathLike, right: Sequence[int], left: Sequence[int]) -> None:
    import json

    Path(path).write_text(json.dumps({"model_contour": {"right_contour": [int(v) for v in right],
                                                        "left_contour": [int(v) for v in left]}}, indent=4))


# ------------------------------------------------------------------------------------------------------------------
# FLAME


@contextmanager
def _fake_chumpy():
    """Temporarily register modules ``chumpy`` / ``chumpy.ch`` with a class ``Ch`` whose pickled state is chumpy's
    (``__dict__`` with the array in ``x``), so a pickle written here references ``chumpy.ch.Ch`` exactly as FLAME's
    files do."""
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    mod, sub = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

    class Ch:  # noqa: D401 - mimics chumpy.ch.Ch's pickled form
        def __init__(self, x):
            self.x = np.asarray(x)
            self.dterms = ["x"]
            self._dirty_vars = set()

        def __getstate__(self):
            return dict(self.__dict__)

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    sub.Ch = Ch
    mod.ch = sub
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = mod, sub
    try:
        yield Ch
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def write_flame_pickle(path: PathLike, v_template_m, faces, shapedirs_m, posedirs_m, J_regressor, kintree_table,
                       weights, *, chumpy: bool = True, drop: Sequence[str] = ()) -> None:
    """Write a FLAME ``generic_model.pkl`` as FLAME ships it: a protocol-2 pickle of a dict whose ``v_template``,
    ``shapedirs``, ``J`` and ``weights`` are ``chumpy.ch.Ch`` objects, ``f`` uint32, ``posedirs`` float64,
    ``J_regressor`` a scipy ``csc_matrix``, ``kintree_table`` int64, metres. ``drop`` leaves keys out (bad-input
    tests)."""
    import scipy.sparse as sp

    Jr = sp.csc_matrix(np.asarray(J_regressor, dtype=np.float64))
    J = np.asarray(J_regressor) @ np.asarray(v_template_m)
    with _fake_chumpy() as Ch:
        wrap = Ch if chumpy else (lambda x: np.asarray(x))
        d = {"v_template": wrap(np.asarray(v_template_m, dtype=np.float64)),
             "f": np.asarray(faces, dtype=np.uint32),
             "shapedirs": wrap(np.asarray(shapedirs_m, dtype=np.float64)),
             "posedirs": np.asarray(posedirs_m, dtype=np.float64),
             "J_regressor": Jr, "kintree_table": np.asarray(kintree_table, dtype=np.int64),
             "weights": wrap(np.asarray(weights, dtype=np.float64)), "J": wrap(J),
             "bs_style": "lbs", "bs_type": "lrotmin"}
        for k in drop:
            d.pop(k, None)
        with open(path, "wb") as f:
            pickle.dump(d, f, protocol=2)


def write_deca_landmarks(path: PathLike, face_idx: np.ndarray, bary: np.ndarray) -> None:
    """Write DECA's ``landmark_embedding.npy`` layout (a pickled dict in a 0-d object array) with the 68 points as
    ``full_lmk_faces_idx (1, 68)`` / ``full_lmk_bary_coords (1, 68, 3)`` and the 51 inner ones as ``static_*``."""
    d = {"full_lmk_faces_idx": np.asarray(face_idx, dtype=np.int64).reshape(1, -1),
         "full_lmk_bary_coords": np.asarray(bary, dtype=np.float64).reshape(1, -1, 3),
         "static_lmk_faces_idx": np.asarray(face_idx[17:], dtype=np.int64),
         "static_lmk_bary_coords": np.asarray(bary[17:], dtype=np.float64)}
    np.save(path, np.array(d, dtype=object), allow_pickle=True)


def flame_rig_from_ict(model: LinearFaceModel, n_shape: int = 300, n_expression: int = 100):
    """A FLAME-layout rig on an ICT mesh (test/benchmark data): shape = ICT identity modes, expression = ICT
    blendshapes (zero-padded to FLAME's 300 + 100), five joints (root at the head's centre, neck below it, jaw
    between the ears at mouth height, eyes at the eye corners' centres), the jaw skinning the vertices below the
    mouth corners (blended over 1.5 cm), zero pose correctives. Returns the arrays in metres."""
    T = model.template.detach().cpu().double().numpy()
    V = len(T)
    lm = model.landmarks["ibug68"].vertex_index
    sd = np.zeros((V, 3, n_shape + n_expression))
    Bi = model.identity_basis.detach().cpu().double().numpy().reshape(-1, V, 3)[:n_shape]
    Be = model.expression_basis.detach().cpu().double().numpy().reshape(-1, V, 3)[:n_expression]
    sd[:, :, :len(Bi)] = Bi.transpose(1, 2, 0)
    sd[:, :, n_shape:n_shape + len(Be)] = Be.transpose(1, 2, 0)
    eye_r, eye_l = T[lm[36:42]].mean(0), T[lm[42:48]].mean(0)
    mouth_y = T[lm[[48, 54]], 1].mean()
    jaw = np.array([0.0, mouth_y + 1.0, T[lm[[0, 16]], 2].mean()])
    neck = np.array([0.0, T[:, 1].min(), T[:, 2].mean()])
    root = T.mean(0)

    # each joint an exact affine combination of four spread-out vertices (the regressor's rows sum to 1)
    anchors = np.array([np.argmin(T[:, 0]), np.argmax(T[:, 0]), np.argmin(T[:, 1]), np.argmax(T[:, 2])])
    A = np.vstack([T[anchors].T, np.ones(4)])
    Jr = np.zeros((5, V))
    for k, p in enumerate([root, neck, jaw, eye_l, eye_r]):
        Jr[k, anchors] = np.linalg.solve(A, np.append(p, 1.0))
    below = np.clip((mouth_y - T[:, 1]) / 1.5 + 0.5, 0, 1)
    W = np.zeros((V, 5))
    W[:, 2] = below
    W[:, 0] = 1 - below
    kintree = np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)
    return {"v_template": T / 100, "shapedirs": sd / 100, "posedirs": np.zeros((V, 3, 36)), "J_regressor": Jr,
            "kintree_table": kintree, "weights": W, "faces": model.faces.cpu().numpy()}


# ------------------------------------------------------------------------------------------------------------------
# everything at once


def write_all_formats(model: LinearFaceModel, folder: PathLike, *, n_identity: int = 20, n_expression: int = 20,
                      n_albedo: int = 4) -> Dict[str, dict]:
    """Write ``model`` (e.g. a decimated ICT face) in every supported format into ``folder``.

    Returns ``{format: {"path": ..., extra file paths, "arrays": what was written (cm / [0, 1])}}``; the identity /
    expression bases are re-expressed as orthonormal PCAs (same span) as the formats require.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    T = model.template.detach().cpu().double().numpy()
    V = len(T)
    faces = model.faces.cpu().numpy()
    Bi = model.identity_basis.detach().cpu().double().numpy().reshape(-1, V, 3)[:n_identity]
    Be = model.expression_basis.detach().cpu().double().numpy().reshape(-1, V, 3)[:n_expression]
    pcs, std = orthonormal_pca(Bi)
    epcs, estd = orthonormal_pca(Be)
    amean, abasis = smooth_albedo(T, n_albedo)
    apcs, astd = orthonormal_pca(abasis)
    lm = model.landmarks["ibug68"].vertex_index
    mapping = {k: int(v) for k, v in enumerate(lm) if not (k < 17 and k != 8) and k not in (60, 64)}
    right = model.landmarks["jawline_right_extended"].vertex_index
    left = model.landmarks["jawline_left_extended"].vertex_index
    out: Dict[str, dict] = {}
    arrays = {"mean": T, "faces": faces, "pcs": pcs, "std": std, "epcs": epcs, "estd": estd, "albedo_mean": amean,
              "apcs": apcs, "astd": astd, "ibug68": lm, "right": right, "left": left}
    # BFM 2009 + Guo expression add-on over all vertices but the last 10 (exercises trimIndex)
    p = folder / "01_MorphableModel.mat"
    write_bfm2009(p, T, pcs, std, faces, amean, apcs, astd)
    sub = np.arange(V - 10)
    ex = write_exp_pca(folder, Be[:, sub], sub)
    write_eos_mapping(folder / "ibug_to_bfm.txt", mapping, syntax="info")
    write_eos_contours(folder / "bfm2009_model_contours.json", right, left)
    out["bfm2009"] = {"path": p, "expression": ex["expression"], "landmarks": folder / "ibug_to_bfm.txt",
                      "contours": folder / "bfm2009_model_contours.json", "arrays": arrays,
                      "expression_pcs": ex["pcs"], "expression_std": ex["std_cm"], "expression_vertices": sub}
    # BFM 2017
    p = folder / "model2017-1_synthetic.h5"
    write_bfm2017(p, T, pcs, std, faces, expression=(np.zeros_like(T), epcs, estd), color=(amean, apcs, astd),
                  landmarks_json='[{"id": "center.nose.tip", "coordinates": [0, 0, 0]}]')
    write_eos_mapping(folder / "ibug_to_bfm2017.txt", mapping)
    write_eos_contours(folder / "bfm2017_model_contours.json", right, left)
    out["bfm2017"] = {"path": p, "landmarks": folder / "ibug_to_bfm2017.txt",
                      "contours": folder / "bfm2017_model_contours.json", "arrays": arrays}
    # Deep3DFaceRecon
    p = folder / "BFM_model_front.mat"
    write_bfm_front(p, T, Bi, Be, faces, lm, np.arange(V), amean, abasis)
    out["bfm-front"] = {"path": p, "arrays": arrays}
    # eos / Surrey (mm) + blendshapes
    p = folder / "sfm_synthetic.bin"
    write_eos_model(p, ((T * 10).reshape(-1), pcs, (std * 10) ** 2, faces), (amean.reshape(-1), apcs, astd ** 2, faces),
                    version=4, landmark_definitions={"center.nose.tip": int(lm[30])})
    write_eos_blendshapes(folder / "expression_blendshapes.bin",
                          [(n, Be[k].reshape(-1) * 10) for k, n in enumerate(model.expression_names[:n_expression])])
    write_eos_mapping(folder / "ibug_to_sfm.txt", mapping)
    write_eos_contours(folder / "sfm_model_contours.json", right, left)
    out["eos"] = {"path": p, "blendshapes": folder / "expression_blendshapes.bin", "landmarks": folder /
                  "ibug_to_sfm.txt", "contours": folder / "sfm_model_contours.json", "arrays": arrays}
    # FLAME (metres) + DECA landmark embedding
    rig = flame_rig_from_ict(model)
    fdir = folder / "flame"
    fdir.mkdir(exist_ok=True)
    p = fdir / "generic_model.pkl"
    write_flame_pickle(p, rig["v_template"], rig["faces"], rig["shapedirs"], rig["posedirs"], rig["J_regressor"],
                       rig["kintree_table"], rig["weights"])
    # each landmark on a triangle of its vertex, with the vertex carrying the largest weight
    tri_of = np.full(V, -1)
    for fi, f in enumerate(faces):
        tri_of[f] = np.where(tri_of[f] < 0, fi, tri_of[f])
    fidx = tri_of[lm]
    bary = np.zeros((68, 3))
    for i, (fi, v) in enumerate(zip(fidx, lm)):
        c = int(np.nonzero(faces[fi] == v)[0][0])
        bary[i] = 0.2
        bary[i, c] = 0.6
    write_deca_landmarks(fdir / "landmark_embedding.npy", fidx, bary)
    out["flame"] = {"path": p, "landmarks": fdir / "landmark_embedding.npy", "rig": rig, "arrays": arrays,
                    "lmk_faces": fidx, "lmk_bary": bary}
    return out
