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
    """
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ShapeError(f"vertices must be (B, V, 3), got {tuple(vertices.shape)}")
    fn = face_normals(vertices, faces, normalize=False)  # (B, F, 3), length = 2 * area
    B, V = vertices.shape[:2]
    out = torch.zeros(B, V, 3, dtype=vertices.dtype, device=vertices.device)
    idx = faces.reshape(-1)
    contrib = fn.repeat_interleave(3, dim=1)  # (B, 3F, 3) in the order of faces.reshape(-1)
    out = out.index_add(1, idx, contrib)
    norm = out.norm(dim=-1, keepdim=True)
    return out / norm.clamp_min(eps)


def pose_rotation(rotation: torch.Tensor) -> torch.Tensor:
    """Accept ``(B, 3, 3)``, axis-angle ``(B, 3)`` or 6D ``(B, 6)`` and return ``(B, 3, 3)`` matrices."""
    if rotation.ndim >= 2 and rotation.shape[-2:] == (3, 3):
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
