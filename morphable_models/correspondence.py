"""Landmarks and regions for a model that ships none: register ICT-FaceKit onto it and transfer ICT's annotations.

Fitting, tracking and reenactment need, on every model (see docs/models.md):

* ``ibug68``: the 68 iBUG points as **vertex ids** (the Gauss-Newton kernels read basis rows per landmark);
* ``jawline_right_extended`` / ``jawline_left_extended``: the jaw polylines the 17 contour points slide on;
* the ``face`` region (colour term, albedo, mesh export, contour search).

When a model's own embedding exists (eos's ``ibug_to_*.txt``, FLAME's landmark embedding, Deep3DFaceRecon's
``keypoints``) it is used; what is still missing is derived here by fitting ICT-FaceKit to the model's mean shape:

1. a similarity transform (scale, rotation, translation) from ICT's face area to the model's template, started from
   the model's own landmarks when it has some (else from the nose tips), refined by trimmed ICP;
2. ICT's 100 identity modes fitted to the closest template points (ridge-regularised least squares, alternated with
   the similarity, 8 rounds), so ICT's face takes the model's proportions;
3. each ICT landmark / jawline vertex of the deformed, aligned ICT goes to the closest template vertex; each template
   vertex takes the ICT region of its closest ICT vertex when that is within ``max_distance`` cm.

Everything is in the package units (centimetres, x the subject's left, y up, z towards the viewer); loaders convert
before calling. Nothing here imports facerender.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import ModelFileError, ShapeError
from .landmarks import IBUG68_LABELS, LandmarkEmbedding
from .regions import Region

log = logging.getLogger(__name__)

#: ICT regions transferred vertex by vertex by :func:`derive_regions`.
SURFACE_REGIONS: Tuple[str, ...] = ("face", "narrow_face", "head_and_neck")
#: ICT regions transferred as whole connected components of the target mesh.
PART_REGIONS: Tuple[str, ...] = ("eyeball_left", "eyeball_right", "mouth_socket", "gums_and_tongue", "teeth")
COMPOSITES: Dict[str, Tuple[str, ...]] = {
    "eyes": ("eyeball_left", "eyeball_right"),
    "mouth_interior": ("mouth_socket", "gums_and_tongue"),
    "head": ("face", "head_and_neck"),
}
#: Landmark sets the fitter needs on every model.
REQUIRED_LANDMARKS = ("ibug68", "jawline_right_extended", "jawline_left_extended")
_INNER = np.arange(17, 68)  # iBUG points without the jaw contour (stable for the first alignment)


def umeyama(src: np.ndarray, dst: np.ndarray, weights: Optional[np.ndarray] = None,
            scale: bool = True) -> Tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ s R src + t`` (Umeyama 1991).

    Args:
        src, dst: ``(N, 3)`` corresponding points (N >= 3, not collinear).
        weights: optional ``(N,)`` non-negative weights.
        scale: estimate ``s`` (else 1).
    Returns:
        ``(s, R (3, 3), t (3,))``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or src.shape[0] < 3:
        raise ShapeError(f"umeyama needs two (N, 3) arrays with N >= 3, got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    ms, md = w @ src, w @ dst
    xs, xd = src - ms, dst - md
    cov = (xd * w[:, None]).T @ xs
    U, S, Vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        d[-1] = -1.0
    R = U @ np.diag(d) @ Vt
    var = float((w * (xs ** 2).sum(1)).sum())
    s = float((S * d).sum() / var) if scale and var > 0 else 1.0
    t = md - s * R @ ms
    return s, R, t


@dataclass
class Registration:
    """ICT-FaceKit fitted onto a model's template.

    Attributes:
        scale, rotation ``(3, 3)``, translation ``(3,)``: ``target ~ scale * rotation @ ict + translation``.
        identity: ``(K_id,)`` ICT identity coefficients of the fitted face.
        ict_vertices: ``(V_ict, 3)`` the whole deformed ICT head in the target's frame.
        rms: RMS distance (cm) of ICT's (subsampled) face-area vertices to their closest template vertices (inliers).
        inlier_fraction: share of ICT face-area vertices within the trimming distance at the end.
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    identity: np.ndarray
    ict_vertices: np.ndarray
    rms: float
    inlier_fraction: float
    notes: List[str] = field(default_factory=list)


def _nose_tip(v: np.ndarray) -> np.ndarray:
    """The frontmost template point near the vertical midline (the nose tip of a frontal face)."""
    cx = np.median(v[:, 0])
    near = np.abs(v[:, 0] - cx) < max(1.0, 0.05 * np.ptp(v[:, 0]))
    cand = v[near] if near.sum() >= 3 else v
    return cand[np.argmax(cand[:, 2])]


def register_ict(template: np.ndarray, ict_model, *, landmark_ids: Optional[np.ndarray] = None,
                 init: Optional[Tuple[float, np.ndarray, np.ndarray]] = None,
                 rigid_iterations: int = 15, shape_iterations: int = 8, ridge: float = 1.0,
                 subsample: int = 3) -> Registration:
    """Fit ICT-FaceKit's face area to ``template (V, 3)`` (cm, package axes) by similarity ICP + identity modes.

    Args:
        template: the model's mean shape ``(V, 3)`` in centimetres.
        ict_model: the full ICT :class:`~morphable_models.linear.LinearFaceModel` (``load_ict()``).
        landmark_ids: optional ``(68,)`` vertex ids of the model's own iBUG embedding (better initial alignment).
        init: optional initial similarity ``(s, R, t)`` (instead of ``landmark_ids`` or the nose tips).
        ridge: weight (cm^2) of ``|alpha|^2`` against the summed squared distances (ICT identity coefficients are
            standard-normal).
        subsample: use every ``subsample``-th vertex of ICT's face area.
    Returns:
        :class:`Registration`.
    """
    from scipy.spatial import cKDTree

    T = np.asarray(template, dtype=np.float64)
    if T.ndim != 2 or T.shape[1] != 3 or T.shape[0] < 10:
        raise ShapeError(f"template must be (V, 3) with V >= 10, got {T.shape}")
    tree = cKDTree(T)
    V_ict = ict_model.num_vertices
    face = ict_model.regions["face"].vertex_ids[::subsample]  # a third of ICT's face area is plenty for 106 unknowns
    I0 = ict_model.template.detach().cpu().double().numpy()
    Bid = ict_model.identity_basis.detach().cpu().double().numpy().reshape(-1, V_ict, 3)
    src0, Bf = I0[face], Bid[:, face]
    K = Bid.shape[0]
    BfT = np.ascontiguousarray(Bf.reshape(K, -1).T)  # (3n, K)
    ict_lm = ict_model.landmarks["ibug68"].vertex_index
    if init is not None:
        s, R, t = init
    elif landmark_ids is not None:
        s, R, t = umeyama(I0[ict_lm[_INNER]], T[np.asarray(landmark_ids)[_INNER]])
    else:
        s, R, t = 1.0, np.eye(3), _nose_tip(T) - I0[ict_lm[30]]
    alpha = np.zeros(Bid.shape[0])

    def match(src):
        X = s * src @ R.T + t
        d, j = tree.query(X)
        thr = max(3.0 * float(np.median(d)), 0.3)
        keep = d < thr
        return d, j, keep

    src = src0
    for _ in range(rigid_iterations):
        d, j, keep = match(src)
        s, R, t = umeyama(src[keep], T[j[keep]])
    for _ in range(shape_iterations):
        d, j, keep = match(src)
        # identity in ICT's frame: (src0 + Bf alpha) ~ R^T (y - t) / s over the inliers
        y = (T[j] - t) @ R / s
        w = np.repeat(keep, 3).astype(np.float64)
        b = ((y - src0) * keep[:, None]).reshape(-1)
        alpha = np.linalg.solve(BfT.T @ (BfT * w[:, None]) + ridge * np.eye(K), BfT.T @ b)
        src = src0 + (BfT @ alpha).reshape(-1, 3)
        d, j, keep = match(src)
        s, R, t = umeyama(src[keep], T[j[keep]])
    d, j, keep = match(src)
    full = (I0 + np.einsum("k,kvc->vc", alpha, Bid)) * s @ R.T + t
    rms = float(np.sqrt(np.mean(d[keep] ** 2))) if keep.any() else float("nan")
    return Registration(s, R, t, alpha, full, rms, float(keep.mean()))


def _closest_vertices(template: np.ndarray, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    from scipy.spatial import cKDTree

    d, j = cKDTree(template).query(points)
    return j.astype(np.int64), d


def derive_landmarks(template: np.ndarray, reg: Registration, ict_model,
                     names: Sequence[str] = REQUIRED_LANDMARKS) -> Tuple[Dict[str, LandmarkEmbedding], dict]:
    """ICT's landmark sets carried to the closest template vertices of the registered ICT.

    Returns ``({name: LandmarkEmbedding}, {name: (mean, max) distance in cm})``.
    """
    out, dist = {}, {}
    for name in names:
        src = ict_model.landmarks[name]
        ids, d = _closest_vertices(template, reg.ict_vertices[src.vertex_index])
        labels = IBUG68_LABELS if name == "ibug68" else src.labels
        out[name] = LandmarkEmbedding.from_vertices(name, ids, labels)
        dist[name] = (float(d.mean()), float(d.max()))
    return out, dist


def derive_regions(template: np.ndarray, faces: np.ndarray, reg: Registration, ict_model, *,
                   surface: Sequence[str] = SURFACE_REGIONS, parts: Sequence[str] = PART_REGIONS,
                   max_distance: float = 0.5, votes: int = 8, min_vertices: int = 10) -> Dict[str, Region]:
    """ICT regions carried to the template by votes of the registered ICT head.

    Each template vertex looks up its ``votes`` closest vertices of the registered ICT head (the closest within
    ``max_distance`` cm). A *surface* region (``face``, ``narrow_face``, ``head_and_neck``) takes the vertices most of
    whose votes fall in it; a *part* region (eyeballs, mouth socket, gums and tongue, teeth) takes whole connected
    components of the template mesh most of whose vertices vote for it, so a face surface that merely passes close
    to ICT's eyeballs is not labelled an eyeball. Regions with fewer than ``min_vertices`` vertices are dropped;
    composites (``eyes``, ``mouth_interior``, ``head``) are rebuilt from what was found.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    T = np.asarray(template, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    V = len(T)
    d, j = cKDTree(reg.ict_vertices).query(T, k=votes)
    d, j = d.reshape(V, -1), j.reshape(V, -1)
    near = d[:, 0] < max_distance
    V_ict = ict_model.num_vertices
    out: Dict[str, Region] = {}

    def share(name):
        return ict_model.regions[name].vertex_mask(V_ict)[j].mean(1)

    for name in surface:
        if name in ict_model.regions:
            ids = np.nonzero(near & (share(name) > 0.5))[0]
            if ids.size >= min_vertices:
                out[name] = Region.from_vertices(name, ids, faces,
                                                 f"derived from ICT-FaceKit's {name!r} (vertex votes)")
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    adj = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(V, V))
    n_comp, comp = connected_components(adj, directed=False)
    for name in parts:
        if name not in ict_model.regions:
            continue
        vote = (share(name) > 0.5) & near
        frac = np.bincount(comp, weights=vote, minlength=n_comp) / np.bincount(comp, minlength=n_comp)
        ids = np.nonzero(frac[comp] > 0.5)[0]
        if ids.size >= min_vertices:
            out[name] = Region.from_vertices(name, ids, faces,
                                             f"derived from ICT-FaceKit's {name!r} (whole mesh components)")
    for name, members in COMPOSITES.items():
        have = [out[p] for p in members if p in out]
        if have:
            r = have[0]
            for p in have[1:]:
                r = r.union(p)
            out[name] = Region(name, r.vertex_ids, r.face_ids, "union of " + ", ".join(p for p in members if p in out))
    return out


def jawlines_from_ibug(landmarks: LandmarkEmbedding) -> Dict[str, LandmarkEmbedding]:
    """Jaw polylines from the 68-point set alone (points 0-7 and 9-16), for models without ICT to register."""
    idx = landmarks.vertex_index
    right, left = idx[0:8], idx[9:17]
    return {"jawline_right": LandmarkEmbedding.from_vertices("jawline_right", right),
            "jawline_left": LandmarkEmbedding.from_vertices("jawline_left", left),
            "jawline_right_extended": LandmarkEmbedding.from_vertices("jawline_right_extended", right),
            "jawline_left_extended": LandmarkEmbedding.from_vertices("jawline_left_extended", left)}


def order_contour(template: np.ndarray, ids: Sequence[int], side: str) -> np.ndarray:
    """Order a jaw contour as the fitter expects: the right side from the ear down to the chin, the left side from
    the chin up to the ear (by height ``y``)."""
    ids = np.asarray(ids, dtype=np.int64)
    y = np.asarray(template)[ids, 1]
    order = np.argsort(-y) if side == "right" else np.argsort(y)
    return ids[order]


def snap_to_vertices(emb: LandmarkEmbedding, name: Optional[str] = None) -> LandmarkEmbedding:
    """A barycentric embedding snapped to the vertex of largest weight of each point (the fitter needs vertices)."""
    k = np.argmax(emb.weights, axis=1)
    ids = emb.vertex_ids[np.arange(len(emb)), k]
    return LandmarkEmbedding.from_vertices(name or emb.name, ids, emb.labels)


def check_orientation(template: np.ndarray, landmarks: Mapping[str, LandmarkEmbedding], where: str) -> None:
    """Raise :class:`ModelFileError` when the 68 points contradict the package axes (x the subject's left, y up,
    z towards the viewer): the subject's right outer eye corner (36) must have a smaller x than the left one (45),
    the eyes must lie above the mouth, and the nose tip (30) in front of the eye corners."""
    if "ibug68" not in landmarks:
        return
    lm = landmarks["ibug68"]
    P = np.einsum("lk,lkc->lc", lm.weights, np.asarray(template, dtype=np.float64)[lm.vertex_ids])
    problems = []
    if not P[36, 0] < P[45, 0]:
        problems.append(f"x of the right eye corner (point 36) {P[36, 0]:.2f} is not below the left one's "
                        f"(point 45) {P[45, 0]:.2f}: x is mirrored")
    if not P[[36, 45], 1].mean() > P[[48, 54], 1].mean():
        problems.append("the eyes are not above the mouth: y points down")
    if not P[30, 2] > P[[36, 45], 2].mean():
        problems.append("the nose tip is not in front of the eye corners: z points away from the viewer")
    if problems:
        raise ModelFileError(f"{where}: unexpected axes ({'; '.join(problems)}); the package expects x the "
                             f"subject's left, y up, z towards the viewer")


def _jaw_from_contours(template: np.ndarray, right: np.ndarray, left: np.ndarray,
                       chin: Optional[int]) -> Dict[int, int]:
    """iBUG jaw points 0-7 / 9-16 spread by arc length along the contours (ear -> chin on the right, chin -> ear on
    the left) and the chin (8) at their lower ends when unknown."""
    T = np.asarray(template, dtype=np.float64)
    if chin is None:
        ends = np.array([right[-1], left[0]])
        chin = int(ends[np.argmin(T[ends, 1])])
    out = {8: int(chin)}

    def spread(poly, fractions):
        P = T[poly]
        s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(P, axis=0), axis=1))])
        return [int(poly[np.argmin(np.abs(s - f * s[-1]))]) for f in fractions]

    r = np.concatenate([right, [chin]]) if right[-1] != chin else right
    l_ = np.concatenate([[chin], left]) if left[0] != chin else left
    for k, v in enumerate(spread(r, np.arange(8) / 8.0)):
        out[k] = v
    for k, v in enumerate(spread(l_, (np.arange(8) + 1) / 8.0)):
        out[9 + k] = v
    return out


def complete_annotations(template: np.ndarray, faces: np.ndarray, *, where: str,
                         landmarks: Optional[Mapping[str, LandmarkEmbedding]] = None,
                         ibug_partial: Optional[Mapping[int, int]] = None,
                         contours: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                         regions: Optional[Mapping[str, Region]] = None,
                         ict_model=None, home=None) -> Tuple[Dict[str, LandmarkEmbedding], Dict[str, Region], dict]:
    """Fill the landmark sets and regions the pipelines need (see the module docstring).

    Args:
        template ``(V, 3)`` cm, faces ``(F, 3)``: the model's mean shape.
        where: the file, for messages.
        landmarks: complete sets from the model's files (``ibug68`` may be barycentric: it is snapped to vertices and
            the original kept as ``ibug68_barycentric``).
        ibug_partial: ``{iBUG point (0-based): vertex id}`` for files that define only some points (eos mappings
            leave out the jaw contour and the inner mouth corners).
        contours: ``(right, left)`` jaw contour vertex ids (eos's ``model_contours.json``): they become the jaw
            polylines and place the missing jaw points.
        regions: regions from the model's files.
        ict_model: ICT-FaceKit (default: loaded from ``home`` when installed), registered onto the template to
            derive whatever is still missing.
    Returns:
        ``(landmarks, regions, info)``; ``info["source"]`` says where each set came from and ``info["derived"]``
        what was derived (with the registration's RMS distance), stored by loaders in ``model.extra``.
    Raises:
        ModelFileError: points are missing and ICT-FaceKit is not installed to derive them (the message says what
        to pass), or the points contradict the package axes.
    """
    t_start = time.perf_counter()
    T = np.asarray(template, dtype=np.float64)
    lms: Dict[str, LandmarkEmbedding] = dict(landmarks or {})
    regs: Dict[str, Region] = dict(regions or {})
    info: dict = {"derived": [], "source": {k: "model files" for k in list(lms) + list(regs)}}
    if "ibug68" in lms and not lms["ibug68"].is_vertex_set:
        lms["ibug68_barycentric"] = lms["ibug68"]
        lms["ibug68"] = snap_to_vertices(lms["ibug68"], "ibug68")
        info["source"]["ibug68"] = "model files (barycentric points snapped to their largest-weight vertex)"
        info["source"]["ibug68_barycentric"] = "model files"
    known: Dict[int, int] = {}
    if "ibug68" in lms:
        known = {i: int(v) for i, v in enumerate(lms["ibug68"].vertex_index)}
    elif ibug_partial:
        known = {int(k): int(v) for k, v in ibug_partial.items()}
        info["source"]["ibug68"] = f"model files ({len(known)} of 68 points)"
    if contours is not None:
        right, left = (np.asarray(c, dtype=np.int64) for c in contours)
        if T[right, 0].mean() > T[left, 0].mean():
            right, left = left, right
            info["derived"].append("contours swapped: the 'right' contour lay on the subject's left (+x)")
        right, left = order_contour(T, right, "right"), order_contour(T, left, "left")
        for side, ids in (("right", right), ("left", left)):
            for name in (f"jawline_{side}_extended", f"jawline_{side}"):
                if name not in lms:
                    lms[name] = LandmarkEmbedding.from_vertices(name, ids)
                    info["source"][name] = "model contour file"
        jaw = [k for k in list(range(8)) + list(range(9, 17)) if k not in known]
        if jaw:
            placed = _jaw_from_contours(T, right, left, known.get(8))
            for k in jaw + ([8] if 8 not in known else []):
                known[k] = placed[k]
            info["derived"].append(f"iBUG jaw points {sorted(jaw)} spread along the model's contours")
    missing_pts = [k for k in range(68) if k not in known]
    missing_sets = [n for n in REQUIRED_LANDMARKS[1:] if n not in lms]
    need_face = "face" not in regs
    reg = None
    if missing_pts or missing_sets or need_face:
        if ict_model is None:
            from . import ict

            if ict.is_installed(home):
                ict_model = ict.load_ict(home)
        if ict_model is not None:
            inner = [k for k in _INNER if k in known]
            init = None
            if len(inner) >= 6:
                # align on the known inner points first
                I0 = ict_model.template.detach().cpu().double().numpy()
                ict_lm = ict_model.landmarks["ibug68"].vertex_index
                s, R, t = umeyama(I0[ict_lm[inner]], T[[known[k] for k in inner]])
                init = (s, R, t)
            reg = register_ict(T, ict_model, init=init)
            info["registration_rms_cm"] = round(reg.rms, 4)
            info["registration_inliers"] = round(reg.inlier_fraction, 3)
    if missing_pts:
        if reg is not None:
            pts = reg.ict_vertices[ict_model.landmarks["ibug68"].vertex_index[missing_pts]]
            ids, d = _closest_vertices(T, pts)
            for k, v in zip(missing_pts, ids):
                known[k] = int(v)
            info["derived"].append(f"iBUG points {missing_pts} from ICT-FaceKit registered onto the template "
                                   f"(RMS {reg.rms:.3f} cm; landmark distance mean {d.mean():.3f} cm, "
                                   f"max {d.max():.3f} cm)")
        elif set(missing_pts) <= {60, 64} and 48 in known and 54 in known:
            known.setdefault(60, known[48])
            known.setdefault(64, known[54])
            info["derived"].append("inner mouth corners 60/64 = outer corners 48/54 (ICT-FaceKit not installed)")
        else:
            raise ModelFileError(
                f"{where}: the model defines {68 - len(missing_pts)} of the 68 iBUG landmarks (missing "
                f"{missing_pts[:10]}{' ...' if len(missing_pts) > 10 else ''}) and ICT-FaceKit, used to derive them, "
                f"is not installed; pass the model's landmark files (eos ibug_to_*.txt with its model_contours.json, "
                f"FLAME's landmark embedding) or run 'facerender model install ict-facekit' first")
    if "ibug68" not in lms or missing_pts:
        lms["ibug68"] = LandmarkEmbedding.from_vertices("ibug68", [known[k] for k in range(68)], IBUG68_LABELS)
    check_orientation(T, lms, where)
    if missing_sets:
        if reg is not None:
            derived, dist = derive_landmarks(T, reg, ict_model, names=missing_sets)
            for n, e in derived.items():
                lms[n] = e
                info["source"][n] = "derived by registering ICT-FaceKit"
            info["derived"].append(f"landmark sets {missing_sets} from ICT-FaceKit")
        else:
            for n, e in jawlines_from_ibug(lms["ibug68"]).items():
                if n not in lms:
                    lms[n] = e
                    info["source"][n] = "iBUG jaw points"
            info["derived"].append("jaw polylines = iBUG points 0-7 / 9-16 (ICT-FaceKit not installed)")
    for side in ("right", "left"):
        short, ext = f"jawline_{side}", f"jawline_{side}_extended"
        if short not in lms and ext in lms:
            lms[short] = LandmarkEmbedding.from_vertices(short, lms[ext].vertex_index)
    if reg is not None:
        new = derive_regions(T, faces, reg, ict_model)
        added = [n for n in new if n not in regs]
        for n in added:
            regs[n] = new[n]
            info["source"][n] = "derived by registering ICT-FaceKit"
        if added:
            info["derived"].append(f"regions {added} from ICT-FaceKit")
    if "face" not in regs:
        regs["face"] = Region("face", np.arange(len(T)), np.arange(len(faces)), "the whole mesh")
        info["source"]["face"] = "the whole mesh"
        info["derived"].append("face region = the whole mesh")
        log.warning("%s: no face area in the model files and none derived: the whole mesh is the face area", where)
    info["seconds"] = round(time.perf_counter() - t_start, 3)
    return lms, regs, info
