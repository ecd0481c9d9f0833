"""FLAME (``generic_model.pkl``): an articulated head model with linear blend skinning, as an ``nn.Module``.

FLAME (Li et al. 2017) = a template, shape and expression blendshapes, pose-corrective blendshapes and linear blend
skinning over five joints (root/global, neck, jaw, left eye, right eye). This module follows smplx's layout and
maths (verified against smplx's ``lbs.py`` and FLAME_PyTorch, see docs/models.md):

    v_shaped = v_template + shapedirs . [beta, psi]
    J        = J_regressor . v_shaped                                  (5 joints)
    R_k      = rodrigues(theta_k)                                     (root, neck, jaw, left eye, right eye)
    v_posed  = v_shaped + posedirs . vec(R_1..R_4 - I)                 (36 pose-corrective coefficients)
    G_k      = G_parent(k) . [R_k | J_k - J_parent(k)]; A_k = G_k - [0 | G_k J_k]
    v        = sum_k w_vk A_k [v_posed; 1]

**The file.** A latin-1 pickle of a dict written with chumpy objects (``v_template``, ``shapedirs``, ``J``,
``weights`` are ``chumpy.ch.Ch`` whose array is in ``__dict__['x']``); ``f (F, 3)`` uint32 0-based; ``posedirs
(V, 3, 36)``; ``J_regressor`` a scipy sparse ``(5, V)``; ``kintree_table (2, 5)`` (row 0 the parents, the root's
entry meaningless); ``shapedirs (V, 3, 400)`` = 300 shape + 100 expression components. Units: **metres** (converted
to centimetres here). chumpy does not import on Python 3.11 / NumPy 2, so :func:`read_flame_pickle` unpickles with a
restricted unpickler that maps ``chumpy.*`` classes to a stand-in keeping the array, scipy sparse matrices to a
stand-in rebuilt as CSR, allows NumPy's array reconstruction, and refuses every other class.

**Landmarks.** DECA/EMOCA's ``landmark_embedding.npy`` (``full_lmk_faces_idx (1, 68)``, ``full_lmk_bary_coords
(1, 68, 3)``), or FLAME_PyTorch's ``flame_static_embedding.pkl`` (51 inner points, ``lmk_face_idx``,
``lmk_b_coords``) with ``flame_dynamic_embedding.npy`` (the 17 contour points per yaw bin of -39..39 degrees; the
frontal row 39 is used). The barycentric points are kept as ``ibug68_barycentric``; the fitter's ``ibug68`` snaps
them to their largest-weight vertex. ``FLAME_masks.pkl`` gives regions (``face``, eyeballs, lips, ...).

**How pose reaches the Gauss-Newton fitter.** The fitter is linear-in-coefficients (its Jacobians are basis rows),
so :meth:`FlameModel.linearize` returns, at a point ``p0 = (beta0, psi0, jaw0, eyes0)``, the exact first-order
expansion as a :class:`~morphable_models.linear.LinearFaceModel` in ABSOLUTE coordinates:
``V(p) ~ [V(p0) - J p0] + J p`` with ``J`` the exact Jacobian (shape and expression columns are exact for a fixed
pose: LBS is linear in them; the seven pose columns ``jaw_rx, jaw_ry, jaw_rz, eye_left_rx, eye_left_ry,
eye_right_rx, eye_right_ry`` come from forward-mode autodiff). The fitter's coefficients are then FLAME's own
parameters (priors and bounds apply to them), the expansion is exact at ``p0``, and refitting after re-linearising
at the solution is Gauss-Newton on the exact LBS energy (:func:`facerender.fitting.relinearize`). The head's global
rotation and the neck stay at zero: the fitter's rigid pose moves the head. docs/models.md measures the linearisation
error against exact LBS.
"""
from __future__ import annotations

import copy
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .correspondence import complete_annotations
from .errors import ModelFileError, ShapeError
from .format_utils import orient_outward, require_keys, unit_scale
from .landmarks import IBUG68_LABELS, LandmarkEmbedding
from .linear import LinearFaceModel, check_coefficients
from .paths import PathLike
from .regions import Region
from .rotation import axis_angle_to_matrix

log = logging.getLogger(__name__)

FLAME_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
FLAME_LICENSE = ("FLAME (Max Planck Institute for Intelligent Systems): used under the licence its user accepted "
                 "when downloading it (flame.is.tue.mpg.de); the converted copy is bound by the same licence")
JOINT_NAMES = ("global", "neck", "jaw", "eye_left", "eye_right")
POSE_NAMES = ("jaw_rx", "jaw_ry", "jaw_rz", "eye_left_rx", "eye_left_ry", "eye_right_rx", "eye_right_ry")
#: (joint, axis) of each linearised pose coefficient.
POSE_AXES = ((2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (4, 0), (4, 1))
#: Bounds (radians) of the pose coefficients seen by the fitter: positive jaw_rx opens the mouth; positive eye rx
#: turns the gaze down, positive ry towards the subject's left.
POSE_BOUNDS = ((-0.1, 0.7), (-0.2, 0.2), (-0.2, 0.2), (-0.5, 0.5), (-0.6, 0.6), (-0.5, 0.5), (-0.6, 0.6))
FLAME_MASK_REGIONS = {"face": "face", "left_eyeball": "eyeball_left", "right_eyeball": "eyeball_right"}


# ------------------------------------------------------------------------------------------------------------------
# chumpy-free unpickling


class ChumpyStandIn:
    """Stands in for any ``chumpy`` class while unpickling: keeps the pickled state; the array is ``state['x']``."""

    def __init__(self, *args, **kwargs):
        self.__dict__["_chumpy_args"] = args

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"_state": state})

    def __reduce__(self):  # pragma: no cover - never re-pickled
        raise TypeError("a chumpy stand-in cannot be pickled")


class SparseStandIn:
    """Stands in for scipy sparse matrices of any scipy version while unpickling (rebuilt by :func:`to_array`)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__.update(state)


class _ChumpyClassFactory:
    """``find_class`` result for chumpy names: a stand-in subclass remembering the original name."""

    def __init__(self):
        self.seen = set()

    def __call__(self, module: str, name: str):
        self.seen.add(f"{module}.{name}")
        return type(name, (ChumpyStandIn,), {"_chumpy_name": f"{module}.{name}"})


_SAFE_BUILTINS = {("builtins", n) for n in ("object", "set", "frozenset", "slice", "complex", "list", "dict",
                                            "tuple", "bytearray", "range")}
_SAFE_BUILTINS |= {("__builtin__", n) for n in ("object", "set", "frozenset", "slice", "complex", "list", "dict",
                                                "tuple", "bytearray")}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles model files without chumpy and without running arbitrary code: NumPy arrays and scalars, scipy
    sparse matrices (stand-in), chumpy objects (stand-in) and a few builtins are allowed; anything else raises
    :class:`ModelFileError` naming the class."""

    def __init__(self, file, where: str):
        super().__init__(file, encoding="latin1")
        self.where = where
        self.chumpy = _ChumpyClassFactory()

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "chumpy":
            return self.chumpy(module, name)
        if module.startswith("scipy.sparse"):
            return type(name, (SparseStandIn,), {"_scipy_name": f"{module}.{name}"})
        if module in ("copy_reg", "copyreg") and name in ("_reconstructor", "__newobj__", "__newobj_ex__"):
            return super().find_class("copyreg", name)
        if (module, name) == ("_codecs", "encode"):  # protocol-2 pickles written by Python 3 store bytes this way
            return super().find_class(module, name)
        if (module, name) in _SAFE_BUILTINS:
            return super().find_class("builtins", name)
        if module.split(".")[0] == "numpy" and name in ("_reconstruct", "scalar", "ndarray", "dtype", "_frombuffer",
                                                       "frombuffer", "array"):
            return super().find_class(module, name)
        if module.split(".")[0] == "torch":
            # DECA's landmark_embedding.npy stores two torch tensors
            if name in ("_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_parameter") or name.endswith("Storage"):
                return super().find_class(module, name)
        raise ModelFileError(f"{self.where}: the pickle needs class {module}.{name}, which a FLAME model file does "
                             f"not contain; refusing to load it")

    def persistent_load(self, pid):  # torch tensors inside DECA's .npy
        raise ModelFileError(f"{self.where}: the pickle uses persistent ids ({pid!r}); not a plain model file")


def to_array(x, where: str, name: str) -> np.ndarray:
    """A dense NumPy array from an unpickled value (ndarray, chumpy stand-in, scipy-sparse stand-in, torch tensor)."""
    if isinstance(x, ChumpyStandIn):
        if "x" not in x.__dict__:
            cls = getattr(x, "_chumpy_name", "chumpy")
            raise ModelFileError(f"{where}: {name} is a {cls} object without a stored array ('x'); this chumpy "
                                 f"expression needs chumpy itself to evaluate. Re-save the model with plain arrays "
                                 f"(e.g. FLAME 2020/2023 releases store Ch arrays that load here)")
        return to_array(x.__dict__["x"], where, name)
    if isinstance(x, SparseStandIn):
        d = x.__dict__
        try:
            shape = tuple(d.get("_shape") or d.get("shape"))
            data, indices, indptr = d["data"], d["indices"], d["indptr"]
        except (KeyError, TypeError) as e:
            raise ModelFileError(f"{where}: {name} is a sparse matrix without {e}") from None
        import scipy.sparse as sp

        fmt = str(d.get("format", getattr(x, "_scipy_name", "csc")))
        ctor = sp.csr_matrix if "csr" in fmt else sp.csc_matrix
        return np.asarray(ctor((data, indices, indptr), shape=shape).toarray())
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if hasattr(x, "toarray"):
        return np.asarray(x.toarray())
    return np.asarray(x)


def read_flame_pickle(path: PathLike) -> Tuple[dict, list]:
    """Unpickle a FLAME ``generic_model.pkl`` without chumpy. Returns ``(dict of raw values, chumpy classes seen)``."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such file")
    try:
        with open(p, "rb") as f:
            up = RestrictedUnpickler(f, str(p))
            d = up.load()
    except ModelFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, ImportError) as e:
        raise ModelFileError(f"{p}: not a readable pickle, or truncated ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise ModelFileError(f"{p}: expected a dict of model arrays, the pickle holds a {type(d).__name__}")
    return d, sorted(up.chumpy.seen)


def _load_npy_or_pickle(path: PathLike):
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such file")
    if p.suffix == ".npy":
        with open(p, "rb") as f:
            try:
                import numpy.lib.format as npf

                version = npf.read_magic(f)
                reader = npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0
                shape, fortran, dtype = reader(f)
            except ValueError as e:
                raise ModelFileError(f"{p}: not a .npy file ({e})") from None
            if dtype.hasobject:
                try:
                    obj = RestrictedUnpickler(f, str(p)).load()
                except ModelFileError:
                    raise
                except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
                    raise ModelFileError(f"{p}: not a readable pickled .npy ({type(e).__name__}: {e})") from None
                if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
                    obj = obj[()]
                return obj
        return np.load(p, allow_pickle=False)
    with open(p, "rb") as f:
        try:
            return RestrictedUnpickler(f, str(p)).load()
        except ModelFileError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ModelFileError(f"{p}: not a readable pickle ({type(e).__name__}: {e})") from None


def read_flame_landmarks(path: PathLike, faces: np.ndarray, dynamic: Optional[PathLike] = None
                         ) -> Dict[str, LandmarkEmbedding]:
    """Read a FLAME landmark embedding as barycentric :class:`LandmarkEmbedding` s.

    ``landmark_embedding.npy`` (DECA/EMOCA: ``full_lmk_faces_idx``, ``full_lmk_bary_coords``) gives all 68 points;
    ``flame_static_embedding.pkl`` (``lmk_face_idx``, ``lmk_b_coords``) gives the 51 inner points (17..67), and the
    17 contour points come from ``dynamic`` (``flame_dynamic_embedding.npy``, frontal row 39) when given. Returns
    ``{"ibug68": ...}`` (68 points) or ``{"ibug68_inner": ...}`` (51 points).
    """
    where = str(path)
    d = _load_npy_or_pickle(path)
    if not isinstance(d, dict):
        raise ModelFileError(f"{where}: expected a dict of landmark arrays, got {type(d).__name__}")
    faces = np.asarray(faces, dtype=np.int64)

    def emb(name, fidx, bary, labels):
        fidx = to_array(fidx, where, "face indices").reshape(-1).astype(np.int64)
        bary = to_array(bary, where, "barycentric coordinates").reshape(-1, 3).astype(np.float64)
        if fidx.size != bary.shape[0]:
            raise ModelFileError(f"{where}: {fidx.size} face indices for {bary.shape[0]} barycentric triples")
        if fidx.min() < 0 or fidx.max() >= len(faces):
            raise ModelFileError(f"{where}: face indices {fidx.min()}..{fidx.max()} outside the model's "
                                 f"0..{len(faces) - 1}")
        if not np.allclose(bary.sum(1), 1.0, atol=1e-4):
            raise ModelFileError(f"{where}: barycentric coordinates do not sum to 1")
        return LandmarkEmbedding.from_barycentric(name, fidx, faces, bary / bary.sum(1, keepdims=True), labels)

    if "full_lmk_faces_idx" in d:
        return {"ibug68": emb("ibug68", d["full_lmk_faces_idx"], d["full_lmk_bary_coords"], IBUG68_LABELS)}
    require_keys(list(d), ["lmk_face_idx", "lmk_b_coords"], where, "FLAME landmark embedding")
    inner = emb("ibug68_inner", d["lmk_face_idx"], d["lmk_b_coords"], IBUG68_LABELS[17:])
    if len(inner) != 51:
        raise ModelFileError(f"{where}: the static embedding has {len(inner)} points, expected 51 (iBUG 17..67)")
    if dynamic is None:
        return {"ibug68_inner": inner}
    dd = _load_npy_or_pickle(dynamic)
    if not isinstance(dd, dict):
        raise ModelFileError(f"{dynamic}: expected a dict (lmk_face_idx, lmk_b_coords)")
    require_keys(list(dd), ["lmk_face_idx", "lmk_b_coords"], str(dynamic), "FLAME dynamic landmark embedding")
    fi = to_array(dd["lmk_face_idx"], str(dynamic), "lmk_face_idx")
    bc = to_array(dd["lmk_b_coords"], str(dynamic), "lmk_b_coords")
    if fi.ndim != 2 or fi.shape[1] != 17 or fi.shape[0] < 40:
        raise ModelFileError(f"{dynamic}: lmk_face_idx must be (79, 17) (yaw bins x contour points), got {fi.shape}")
    contour = emb("contour", fi[39], bc[39], IBUG68_LABELS[:17])
    full = LandmarkEmbedding("ibug68", np.concatenate([contour.vertex_ids, inner.vertex_ids]),
                             np.concatenate([contour.weights, inner.weights]), IBUG68_LABELS)
    return {"ibug68": full}


def read_flame_masks(path: PathLike, num_vertices: int, faces: np.ndarray) -> Dict[str, Region]:
    """``FLAME_masks.pkl`` (``{region: vertex ids}``) as regions; ``face``/``left_eyeball``/``right_eyeball`` are
    also available under the package names ``face``, ``eyeball_left``, ``eyeball_right``."""
    where = str(path)
    d = _load_npy_or_pickle(path)
    if not isinstance(d, dict):
        raise ModelFileError(f"{where}: expected a dict of vertex-id arrays, got {type(d).__name__}")
    out = {}
    for k, v in d.items():
        ids = to_array(v, where, str(k)).reshape(-1).astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= num_vertices):
            raise ModelFileError(f"{where}: region {k!r} has vertex ids outside 0..{num_vertices - 1}")
        name = FLAME_MASK_REGIONS.get(str(k), f"flame_{k}")
        out[name] = Region.from_vertices(name, ids, faces, f"FLAME_masks.pkl: {k}")
    return out


# ------------------------------------------------------------------------------------------------------------------
# linear blend skinning (functional core)


def batch_rigid_transform(rot: torch.Tensor, joints: torch.Tensor, parents: Sequence[int]
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forward kinematics of a joint tree.

    Args:
        rot: ``(B, J, 3, 3)`` joint rotations (relative to the parent).
        joints: ``(B, J, 3)`` rest-pose joint positions.
        parents: ``J`` parent indices (``parents[0]`` is ignored: the root).
    Returns:
        ``posed_joints (B, J, 3)`` and ``A (B, J, 4, 4)``: the transforms that map rest-pose points attached to each
        joint to their posed positions (``A_k = G_k - [0 | G_k J_k]``).
    """
    B, J = joints.shape[:2]
    rel = joints.clone()
    rel[:, 1:] = joints[:, 1:] - joints[:, list(parents[1:])]
    top = torch.cat([rot, rel.unsqueeze(-1)], dim=-1)  # (B, J, 3, 4)
    bottom = torch.zeros(B, J, 1, 4, dtype=rot.dtype, device=rot.device)
    bottom[..., 0, 3] = 1.0
    local = torch.cat([top, bottom], dim=-2)
    chain = [local[:, 0]]
    for k in range(1, J):
        chain.append(chain[int(parents[k])] @ local[:, k])
    G = torch.stack(chain, dim=1)
    posed = G[:, :, :3, 3]
    corr = (G[:, :, :3, :3] @ joints.unsqueeze(-1)).squeeze(-1)  # G_k J_k (rotation part)
    A = G.clone()
    A[:, :, :3, 3] = G[:, :, :3, 3] - corr
    return posed, A


def lbs(v_shaped: torch.Tensor, pose: torch.Tensor, posedirs: torch.Tensor, J_regressor: torch.Tensor,
        parents: Sequence[int], weights: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Linear blend skinning with pose correctives (smplx's ``lbs`` after the shape blend).

    Args:
        v_shaped: ``(B, V, 3)`` shaped rest-pose vertices.
        pose: ``(B, J, 3)`` axis-angle rotations per joint.
        posedirs: ``(9 * (J - 1), V * 3)`` pose-corrective basis.
        J_regressor: ``(J, V)``.
        parents: ``J`` parent indices.
        weights: ``(V, J)`` skinning weights.
    Returns:
        ``vertices (B, V, 3)``, ``joints (B, J, 3)`` (posed).
    """
    B, V, _ = v_shaped.shape
    Jn = J_regressor.shape[0]
    if pose.shape[1:] != (Jn, 3):
        raise ShapeError(f"pose must be (B, {Jn}, 3), got {tuple(pose.shape)}")
    joints = torch.einsum("jv,bvc->bjc", J_regressor, v_shaped)
    R = axis_angle_to_matrix(pose.reshape(-1, 3)).reshape(B, Jn, 3, 3)
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    feat = (R[:, 1:] - eye).reshape(B, -1)
    v_posed = v_shaped + (feat @ posedirs).reshape(B, V, 3)
    posed_joints, A = batch_rigid_transform(R, joints, parents)
    T = torch.einsum("vj,bjmn->bvmn", weights, A)
    verts = (T[..., :3, :3] @ v_posed.unsqueeze(-1)).squeeze(-1) + T[..., :3, 3]
    return verts, posed_joints


@dataclass
class FlameOutput:
    """Output of :class:`FlameModel`: ``vertices (B, V, 3)`` cm, ``joints (B, 5, 3)`` posed joints,
    ``v_shaped (B, V, 3)`` the shaped rest pose."""

    vertices: torch.Tensor
    joints: torch.Tensor
    v_shaped: torch.Tensor


class FlameModel(nn.Module):
    """FLAME as an ``nn.Module`` (smplx pattern: model data in buffers, maths in :func:`lbs`).

    Args:
        v_template ``(V, 3)``, shapedirs ``(V, 3, K_s)``, exprdirs ``(V, 3, K_e)``, posedirs ``(V, 3, P)``,
        J_regressor ``(J, V)``, parents ``(J,)``, weights ``(V, J)``, faces ``(F, 3)`` (all in centimetres).
        landmarks, regions: as :class:`LinearFaceModel`.
    The forward pass takes ``shape (B, K_s)``, ``expression (B, K_e)`` and per-joint axis-angle ``global_pose``,
    ``neck``, ``jaw`` ``(B, 3)`` and ``eyes (B, 6)`` (left then right), zeros when omitted.
    """

    def __init__(self, v_template, shapedirs, exprdirs, posedirs, J_regressor, parents, weights, faces, *,
                 landmarks: Optional[Mapping[str, LandmarkEmbedding]] = None,
                 regions: Optional[Mapping[str, Region]] = None, name: str = "flame", license: str = FLAME_LICENSE,
                 dtype: torch.dtype = torch.float32, extra: Optional[dict] = None,
                 expression_bound: float = 3.0):
        super().__init__()
        t = torch.as_tensor(np.asarray(v_template), dtype=dtype)
        V = t.shape[0]
        if t.shape != (V, 3):
            raise ShapeError(f"v_template must be (V, 3), got {tuple(t.shape)}")

        def dirs(x, label):
            x = torch.as_tensor(np.asarray(x), dtype=dtype)
            if x.ndim != 3 or x.shape[:2] != (V, 3):
                raise ShapeError(f"{label} must be ({V}, 3, K), got {tuple(x.shape)}")
            return x.contiguous()

        sd, ed, pd = dirs(shapedirs, "shapedirs"), dirs(exprdirs, "exprdirs"), dirs(posedirs, "posedirs")
        Jr = torch.as_tensor(np.asarray(J_regressor), dtype=dtype)
        par = [int(p) for p in np.asarray(parents).reshape(-1)]
        Jn = len(par)
        if Jr.shape != (Jn, V):
            raise ShapeError(f"J_regressor must be ({Jn}, {V}), got {tuple(Jr.shape)}")
        if pd.shape[2] != 9 * (Jn - 1):
            raise ShapeError(f"posedirs must have 9 * (J - 1) = {9 * (Jn - 1)} components, got {pd.shape[2]}")
        if any(not 0 <= par[k] < k for k in range(1, Jn)):
            raise ShapeError(f"parents {par} must list each joint after its parent")
        w = torch.as_tensor(np.asarray(weights), dtype=dtype)
        if w.shape != (V, Jn):
            raise ShapeError(f"weights must be ({V}, {Jn}), got {tuple(w.shape)}")
        f = torch.as_tensor(np.asarray(faces, dtype=np.int64))
        self.register_buffer("v_template", t.contiguous())
        self.register_buffer("shapedirs", sd)
        self.register_buffer("exprdirs", ed)
        self.register_buffer("posedirs", pd.reshape(V * 3, -1).T.contiguous())
        self.register_buffer("J_regressor", Jr.contiguous())
        self.register_buffer("lbs_weights", w.contiguous())
        self.register_buffer("faces", f)
        self.parents = tuple(par)
        self.landmarks: Dict[str, LandmarkEmbedding] = dict(landmarks or {})
        self.regions: Dict[str, Region] = dict(regions or {})
        self.name, self.license, self.units = name, license, "cm"
        self.extra = dict(extra or {})
        self.expression_bound = float(expression_bound)

    # -------------------------------------------------------------------------------------------- properties
    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def num_shape(self) -> int:
        return int(self.shapedirs.shape[2])

    @property
    def num_expression(self) -> int:
        return int(self.exprdirs.shape[2])

    @property
    def num_joints(self) -> int:
        return len(self.parents)

    @property
    def dtype(self) -> torch.dtype:
        return self.v_template.dtype

    @property
    def device(self) -> torch.device:
        return self.v_template.device

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, V={self.num_vertices}, F={self.num_faces}, shape={self.num_shape}, "
                f"expression={self.num_expression}, joints={self.num_joints}, units='cm'")

    # -------------------------------------------------------------------------------------------- forward
    def _vec(self, x, K, B, label):
        if x is None:
            return self.v_template.new_zeros(B, K)
        return check_coefficients(x, K, label, dtype=self.dtype, device=self.device, batch=B).expand(B, K)

    def forward(self, shape: Optional[torch.Tensor] = None, expression: Optional[torch.Tensor] = None, *,
                global_pose: Optional[torch.Tensor] = None, neck: Optional[torch.Tensor] = None,
                jaw: Optional[torch.Tensor] = None, eyes: Optional[torch.Tensor] = None,
                batch_size: Optional[int] = None) -> FlameOutput:
        """Evaluate FLAME.

        Args:
            shape: ``(B, K_s)``; expression: ``(B, K_e)``; global_pose, neck, jaw: ``(B, 3)`` axis-angle;
            eyes: ``(B, 6)`` (left eye then right eye axis-angle). Zeros when None.
        Returns:
            :class:`FlameOutput` (``vertices (B, V, 3)`` in cm).
        """
        args = [x for x in (shape, expression, global_pose, neck, jaw, eyes) if x is not None]
        B = max([x.shape[0] if x.ndim == 2 else 1 for x in args] or [batch_size or 1])
        s = self._vec(shape, self.num_shape, B, "shape")
        e = self._vec(expression, self.num_expression, B, "expression")
        pose = torch.cat([self._vec(global_pose, 3, B, "global_pose"), self._vec(neck, 3, B, "neck"),
                          self._vec(jaw, 3, B, "jaw"), self._vec(eyes, 6, B, "eyes")], dim=1).reshape(B, -1, 3)
        V = self.num_vertices
        v_shaped = (self.v_template.reshape(1, -1)
                    + s @ self.shapedirs.reshape(V * 3, -1).T + e @ self.exprdirs.reshape(V * 3, -1).T).reshape(B, V, 3)
        verts, joints = lbs(v_shaped, pose, self.posedirs, self.J_regressor, self.parents, self.lbs_weights)
        return FlameOutput(verts, joints, v_shaped)

    # -------------------------------------------------------------------------------------------- linearisation
    @property
    def expression_names(self) -> Tuple[str, ...]:
        """Names of the linearised model's expression coefficients: FLAME's expression components, then
        :data:`POSE_NAMES`."""
        return tuple(f"expression{k:03d}" for k in range(self.num_expression)) + POSE_NAMES

    def split_expression(self, expression: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Linearised-model expression coefficients ``(B, K_e + 7)`` -> ``{expression (B, K_e), jaw (B, 3),
        eyes (B, 6)}`` (eye rotations about z are zero)."""
        Ke = self.num_expression
        if expression.ndim != 2 or expression.shape[1] != Ke + len(POSE_NAMES):
            raise ShapeError(f"expression must be (B, {Ke + len(POSE_NAMES)}), got {tuple(expression.shape)}")
        p = expression[:, Ke:]
        z = torch.zeros_like(p[:, :1])
        return {"expression": expression[:, :Ke], "jaw": p[:, 0:3],
                "eyes": torch.cat([p[:, 3:5], z, p[:, 5:7], z], dim=1)}

    def evaluate_linear_coefficients(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """Exact LBS vertices ``(B, V, 3)`` at the linearised model's coefficients (identity = shape)."""
        parts = self.split_expression(expression)
        return self(identity, parts["expression"], jaw=parts["jaw"], eyes=parts["eyes"]).vertices

    def _blend_jacobian(self, expression: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Exact Jacobians ``(K_s, V, 3)`` and ``(K_e, V, 3)`` of the posed vertices w.r.t. the shape and expression
        coefficients at the pose of ``expression (1, K_e + 7)`` (LBS is linear in them for a fixed pose).

        ``dV/dc_k = M_v S_k(v) + sum_j w_vj dt_j/dJ . (J_regressor S_k)``: ``M_v`` the blended rotation of vertex v,
        ``t_j`` the translation of joint j's skinning transform, which is linear in the rest joints (its 15-column
        Jacobian by forward-mode autodiff)."""
        parts = self.split_expression(expression)
        dt, dev = self.dtype, self.device
        pose = torch.cat([torch.zeros(1, 6, dtype=dt, device=dev), parts["jaw"], parts["eyes"]], 1).reshape(-1, 3)
        R = axis_angle_to_matrix(pose)[None]  # (1, J, 3, 3)
        J0 = torch.zeros(1, self.num_joints, 3, dtype=dt, device=dev)
        _, A = batch_rigid_transform(R, J0, self.parents)
        Mv = torch.einsum("vj,jab->vab", self.lbs_weights, A[0, :, :3, :3])  # (V, 3, 3)
        from torch.func import jacfwd

        P = jacfwd(lambda J: batch_rigid_transform(R, J[None], self.parents)[1][0, :, :3, 3])(J0[0])  # (J,3,J,3)
        out = []
        for dirs in (self.shapedirs, self.exprdirs):
            S = dirs.permute(2, 0, 1)  # (K, V, 3)
            D = torch.einsum("jv,kvc->kjc", self.J_regressor, S)  # joint displacement per component
            dtj = torch.einsum("jaib,kib->kja", P, D)
            out.append(torch.einsum("vab,kvb->kva", Mv, S) + torch.einsum("vj,kja->kva", self.lbs_weights, dtj))
        return out[0], out[1]

    def linearize(self, identity: Optional[torch.Tensor] = None, expression: Optional[torch.Tensor] = None,
                  *, dtype: Optional[torch.dtype] = None) -> LinearFaceModel:
        """The exact first-order expansion at ``(identity = shape, expression = [psi, pose])`` as a
        :class:`LinearFaceModel` in absolute coordinates (see the module docstring).

        Args:
            identity: ``(K_s,)`` or ``(1, K_s)`` shape coefficients of the expansion point (zeros when None).
            expression: ``(K_e + 7,)`` expression + pose coefficients (zeros when None).
        Returns:
            a LinearFaceModel with ``K_s`` identity and ``K_e + 7`` expression coefficients whose value at the
            expansion point equals FLAME's exactly; ``extra['linearized_at']`` holds the point.
        """
        dt = dtype or self.dtype
        work = torch.float64
        m = copy.deepcopy(self).to(work)
        Ks, Ke, Kp = self.num_shape, self.num_expression, len(POSE_NAMES)
        b0 = torch.zeros(1, Ks, dtype=work) if identity is None else identity.detach().to(work).reshape(1, Ks)
        x0 = (torch.zeros(1, Ke + Kp, dtype=work) if expression is None
              else expression.detach().to(work).reshape(1, Ke + Kp))
        dev = self.device
        b0, x0 = b0.to(dev), x0.to(dev)
        with torch.no_grad():
            V0 = m.evaluate_linear_coefficients(b0, x0)[0]
            Jsh, Jex0 = m._blend_jacobian(x0)
        # pose columns by forward-mode autodiff of exact LBS
        from torch.func import jacfwd

        def f(p):
            xx = torch.cat([x0[:, :Ke], p[None]], dim=1)
            return m.evaluate_linear_coefficients(b0, xx)[0]

        Jp = jacfwd(f)(x0[0, Ke:]).permute(2, 0, 1)  # (Kp, V, 3)
        Jex = torch.cat([Jex0, Jp])
        template = (V0 - torch.einsum("k,kvc->vc", b0[0], Jsh) - torch.einsum("k,kvc->vc", x0[0], Jex))
        lo = np.concatenate([np.full(Ke, -self.expression_bound), [b[0] for b in POSE_BOUNDS]])
        hi = np.concatenate([np.full(Ke, self.expression_bound), [b[1] for b in POSE_BOUNDS]])
        return LinearFaceModel(
            template.to(dt), self.faces, Jsh.to(dt), Jex.to(dt),
            identity_names=[f"shape{k:03d}" for k in range(Ks)], expression_names=self.expression_names,
            expression_kind="pca", expression_lower=lo, expression_upper=hi,
            landmarks=self.landmarks, regions=self.regions, name=self.name + "[linearized]", license=self.license,
            units="cm", dtype=dt,
            extra={**{k: v for k, v in self.extra.items() if isinstance(k, str)},
                   "linearized_at": {"identity": b0[0].cpu().numpy(), "expression": x0[0].cpu().numpy()},
                   "nonlinear_model": "flame"},
        ).to(dev)


# ------------------------------------------------------------------------------------------------------------------
# loading


def load_flame(
    path: PathLike,
    *,
    landmarks: Optional[PathLike] = None,
    dynamic_landmarks: Optional[PathLike] = None,
    masks: Optional[PathLike] = None,
    n_shape: int = 100,
    n_expression: int = 50,
    unit: str = "m",
    expression_bound: float = 3.0,
    dtype: torch.dtype = torch.float32,
    home: Optional[PathLike] = None,
    ict_model=None,
) -> FlameModel:
    """Load FLAME's ``generic_model.pkl`` (2020 / 2023) as a :class:`FlameModel` in centimetres.

    Args:
        landmarks: ``landmark_embedding.npy`` (DECA/EMOCA) or ``flame_static_embedding.pkl`` (with
            ``dynamic_landmarks`` = ``flame_dynamic_embedding.npy`` for the contour); found beside the model when
            omitted. Without any, the 68 points are derived by registering ICT-FaceKit (docs/models.md).
        masks: ``FLAME_masks.pkl`` (regions); found beside the model when omitted.
        n_shape, n_expression: components kept (FLAME has 300 and 100; DECA uses 100 and 50).
    Raises:
        ModelFileError: not a pickle, missing keys, wrong shapes, chumpy objects without arrays, classes a model
        file does not contain.
    """
    p = Path(path)
    where = str(p)
    d, chumpy = read_flame_pickle(p)
    require_keys(list(d), FLAME_KEYS, where, "FLAME (generic_model.pkl)")
    a = {k: to_array(d[k], where, k) for k in FLAME_KEYS}
    v = a["v_template"].astype(np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ModelFileError(f"{where}: v_template must be (V, 3), got {v.shape}")
    V = v.shape[0]
    sd = a["shapedirs"].astype(np.float64)
    if sd.ndim != 3 or sd.shape[:2] != (V, 3):
        raise ModelFileError(f"{where}: shapedirs must be ({V}, 3, K), got {sd.shape}")
    n_total = sd.shape[2]
    n_s_file = 300 if n_total >= 300 else n_total
    if n_total > 300 and n_total - 300 < n_expression:
        log.info("%s: %d expression components, %d requested", where, n_total - 300, n_expression)
    ks, ke = min(n_shape, n_s_file), min(n_expression, max(0, n_total - 300))
    if ke == 0:
        log.warning("%s: shapedirs has %d components: no expression components (FLAME has 300 + 100)", where,
                    n_total)
    pd = a["posedirs"].astype(np.float64)
    if pd.ndim != 3 or pd.shape[:2] != (V, 3):
        raise ModelFileError(f"{where}: posedirs must be ({V}, 3, P), got {pd.shape}")
    Jr = a["J_regressor"].astype(np.float64)
    kt = a["kintree_table"].astype(np.int64)
    if kt.ndim != 2 or kt.shape[0] != 2:
        raise ModelFileError(f"{where}: kintree_table must be (2, J), got {kt.shape}")
    Jn = kt.shape[1]
    if Jr.shape != (Jn, V):
        raise ModelFileError(f"{where}: J_regressor is {Jr.shape}, expected ({Jn}, {V})")
    w = a["weights"].astype(np.float64)
    if w.shape != (V, Jn):
        raise ModelFileError(f"{where}: weights is {w.shape}, expected ({V}, {Jn})")
    if Jn != 5:
        raise ModelFileError(f"{where}: {Jn} joints; FLAME has 5 (global, neck, jaw, left eye, right eye)")
    if pd.shape[2] != 9 * (Jn - 1):
        raise ModelFileError(f"{where}: posedirs has {pd.shape[2]} components, expected {9 * (Jn - 1)}")
    f = a["f"]
    from .format_utils import as_triangles

    faces = as_triangles(f, V, 0, where, "f")
    for name, arr in (("v_template", v), ("shapedirs", sd), ("posedirs", pd), ("weights", w)):
        if not np.all(np.isfinite(arr)):
            raise ModelFileError(f"{where}: {name} contains NaN or inf values")
    s = unit_scale(unit, where)
    parents = kt[0].copy()
    parents[0] = -1
    faces, flipped = orient_outward(v * s, faces, where)
    # landmark and mask files beside the model
    folder = p.parent
    if landmarks is None:
        for cand in ("landmark_embedding.npy", "flame_static_embedding.pkl"):
            if (folder / cand).is_file():
                landmarks = folder / cand
                break
    if dynamic_landmarks is None and (folder / "flame_dynamic_embedding.npy").is_file():
        dynamic_landmarks = folder / "flame_dynamic_embedding.npy"
    if masks is None and (folder / "FLAME_masks.pkl").is_file():
        masks = folder / "FLAME_masks.pkl"
    lms: Dict[str, LandmarkEmbedding] = {}
    partial = None
    if landmarks is not None:
        got = read_flame_landmarks(landmarks, faces, dynamic_landmarks)
        if "ibug68" in got:
            lms["ibug68"] = got["ibug68"]
        else:  # 51 inner points: snapped, the jaw is derived
            snapped = got["ibug68_inner"]
            k = np.argmax(snapped.weights, axis=1)
            partial = {17 + i: int(snapped.vertex_ids[i, k[i]]) for i in range(len(snapped))}
            lms["ibug68_inner_barycentric"] = snapped
    regions = read_flame_masks(masks, V, faces) if masks is not None else {}
    lms, regs, info = complete_annotations(v * s, faces, where=where, landmarks=lms, ibug_partial=partial,
                                           regions=regions, ict_model=ict_model, home=home)
    if "ibug68_barycentric" in lms:
        lb = lms["ibug68_barycentric"]
        P = np.einsum("lk,lkc->lc", lb.weights, v[lb.vertex_ids] * s)
        snap = np.linalg.norm(v[lms["ibug68"].vertex_index] * s - P, axis=1)
        info["snap_distance_cm"] = [round(float(snap.mean()), 4), round(float(snap.max()), 4)]
    extra = {"source_file": where, "format": "flame", "file_units": unit, "annotations": info,
             "chumpy_classes": chumpy, "winding_flipped": flipped,
             "landmark_file": str(landmarks) if landmarks else None,
             "mask_file": str(masks) if masks else None, "components_in_file": [n_s_file, n_total - n_s_file]}
    return FlameModel(v * s, sd[:, :, :ks] * s, sd[:, :, n_s_file:n_s_file + ke] * s, pd * s, Jr, parents, w, faces,
                      landmarks=lms, regions=regs, name="flame", dtype=dtype, extra=extra,
                      expression_bound=expression_bound)
