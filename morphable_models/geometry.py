"""Mesh geometry: normals, the model-to-camera transform, and helpers shared by every model.

Conventions (see docs/conventions.md):
  * Model space of ICT-FaceKit (and our default for every model): centimetres, x to the subject's left
    (image right in a frontal view), y up, z towards the viewer.
  * Camera space (OpenCV): x right, y down, z forward. A model point reaches camera space by the ONE transform
    ``X_cam = s * AXIS_FLIP @ R @ X_model + t`` where ``R`` is the head rotation expressed in model space,
    ``AXIS_FLIP = diag(1, -1, -1)`` (a rotation by pi about x) and ``t`` the head position in camera space.
    With ``R = I`` and ``t = (0, 0, d)`` the face looks straight at the camera from distance ``d``.
"""
from __future__ import annotations

from typing import Optional

import torch

from .errors import ShapeError
from .rotation import axis_angle_to_matrix, rotation_6d_to_matrix

AXIS_FLIP = (1.0, -1.0, -1.0)


def check_faces(faces: torch.Tensor, num_vertices: Optional[int] = None, name: str = "faces") -> torch.Tensor:
    """Validate a face array and return it as contiguous int64 ``(F, 3)``.

    Raises ShapeError for a wrong shape, a floating dtype or out-of-range indices (the message states them).
    """
    if not isinstance(faces, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, got {type(faces).__name__}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ShapeError(f"{name} must have shape (F, 3), got {tuple(faces.shape)}")
    if faces.is_floating_point() or faces.dtype == torch.bool:
        raise ShapeError(f"{name} must be an integer tensor, got {faces.dtype}")
    faces = faces.long().contiguous()
    if num_vertices is not None and faces.numel() > 0:
        lo, hi = int(faces.min()), int(faces.max())
        if lo < 0 or hi >= num_vertices:
            raise ShapeError(f"{name} index out of range: found [{lo}, {hi}] for {num_vertices} vertices")
    return faces


def face_normals(vertices: torch.Tensor, faces: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Face normals ``(B, F, 3)`` of ``vertices (B, V, 3)``: ``(v1 - v0) x (v2 - v0)`` (area-weighted if not normalised).

    The direction follows the right-hand rule: counter-clockwise corners seen from outside give an outward normal.
    """
    v0, v1, v2 = (vertices[:, faces[:, k]] for k in range(3))
    n = torch.cross(v1 - v0, v2 - v0, dim=-1)
    return torch.nn.functional.normalize(n, dim=-1, eps=1e-20) if normalize else n


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
    """Area-weighted unit vertex normals ``(B, V, 3)`` of ``vertices (B, V, 3)`` and ``faces (F, 3)``.

    Vertices used by no face get a zero normal. Differentiable (float64 gradcheck in the tests).

    The per-vertex sum of the incident face normals is one sparse product ``A @ n_f`` with the ``(V, F)`` incidence
    matrix in CSR form (built once per faces tensor, dtype and device, and kept on the faces tensor; rebuilt if the
    faces are changed in place). On a 2-core CPU this is 5x faster than ``index_add`` for ICT's face area (9,409
    vertices: 1.7 vs 9.1 ms, forward and backward 8.3 vs 14.1 ms), whose float scatter is the slow part.
    """
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ShapeError(f"vertices must be (B, V, 3), got {tuple(vertices.shape)}")
    fn = face_normals(vertices, faces, normalize=False)  # (B, F, 3), length = 2 * area
    B, V = vertices.shape[:2]
    F = faces.shape[0]
    A = _incidence(faces, V, vertices.dtype, vertices.device)
    if A is None:  # no faces, or a layout the sparse kernels do not take: the plain scatter
        out = torch.zeros(B, V, 3, dtype=vertices.dtype, device=vertices.device)
        out = out.index_add(1, faces.reshape(-1), fn.repeat_interleave(3, dim=1))
    else:
        out = (A @ fn.permute(1, 0, 2).reshape(F, 3 * B)).reshape(V, B, 3).permute(1, 0, 2)
    norm = out.norm(dim=-1, keepdim=True)
    return out / norm.clamp_min(eps)


def _incidence(faces: torch.Tensor, V: int, dtype: torch.dtype, device: torch.device) -> Optional[torch.Tensor]:
    """The ``(V, F)`` vertex-face incidence matrix (CSR, ones) of ``faces``, cached as an attribute of the faces
    tensor under (version, V, dtype, device); None when there are no faces or the dtype is not float32/64."""
    F = faces.shape[0]
    if F == 0 or dtype not in (torch.float32, torch.float64):
        return None
    key = (faces._version, V, dtype, str(device), faces.data_ptr())
    cache = getattr(faces, "_facerender_incidence", None)
    if cache is not None and cache[0] == key:
        return cache[1]
    import warnings

    rows = faces.detach().T.reshape(-1).long()
    cols = torch.arange(F, device=faces.device).repeat(3)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": matrix-times-dense is all we use
        warnings.simplefilter("ignore")
        A = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(3 * F, dtype=dtype, device=faces.device),
                                    (V, F)).coalesce().to_sparse_csr().to(device)
    try:
        faces._facerender_incidence = (key, A)
    except (AttributeError, RuntimeError):  # pragma: no cover - tensors that take no attributes: no cache
        pass
    return A


def pose_rotation(rotation: torch.Tensor) -> torch.Tensor:
    """Accept ``(B, 3, 3)``, axis-angle ``(B, 3)`` or 6D ``(B, 6)`` and return ``(B, 3, 3)`` matrices.

    A 2-D ``(3, 3)`` tensor is three axis-angle vectors (``B = 3``), as its shape says; one matrix is ``(1, 3, 3)``.
    """
    if rotation.ndim >= 3 and rotation.shape[-2:] == (3, 3):
        return rotation
    if rotation.shape[-1] == 3:
        return axis_angle_to_matrix(rotation)
    if rotation.shape[-1] == 6:
        return rotation_6d_to_matrix(rotation)
    raise ShapeError(f"rotation must be (B, 3, 3), (B, 3) axis-angle or (B, 6), got {tuple(rotation.shape)}")


def model_to_camera_rotation(rotation: torch.Tensor) -> torch.Tensor:
    """``AXIS_FLIP @ R``: the full rotation from model space to camera space, ``(B, 3, 3)``."""
    R = pose_rotation(rotation)
    flip = torch.tensor(AXIS_FLIP, dtype=R.dtype, device=R.device).reshape(3, 1)
    return R * flip  # row-wise sign flip == diag(flip) @ R


def model_to_camera(
    vertices: torch.Tensor,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Model space -> camera space: ``X_cam = s * AXIS_FLIP @ R @ X + t``.

    Args:
        vertices: ``(B, V, 3)`` model-space points (cm, y up, z towards the viewer).
        rotation: head rotation in model space, ``(B, 3, 3)``, ``(B, 3)`` axis-angle or ``(B, 6)``.
        translation: ``(B, 3)`` in camera space.
        scale: optional ``(B,)``.
    Returns:
        ``(B, V, 3)`` camera-space points (x right, y down, z forward).
    """
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ShapeError(f"vertices must be (B, V, 3), got {tuple(vertices.shape)}")
    M = model_to_camera_rotation(rotation)
    out = vertices @ M.transpose(-1, -2)
    if scale is not None:
        out = out * scale.reshape(-1, 1, 1)
    return out + translation.reshape(-1, 1, 3)


def camera_to_model(
    points: torch.Tensor,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Inverse of :func:`model_to_camera` for ``points (B, N, 3)``."""
    M = model_to_camera_rotation(rotation)
    out = (points - translation.reshape(-1, 1, 3)) @ M
    if scale is not None:
        out = out / scale.reshape(-1, 1, 1)
    return out
