"""Rotations and rigid transforms (batched, differentiable, device/dtype from the inputs).

Representations:
  * axis-angle ``(..., 3)``: direction = axis, norm = angle in radians (right-handed);
  * rotation matrices ``(..., 3, 3)`` acting on column vectors (``x' = R @ x``);
  * 6D ``(..., 6)`` (Zhou et al., CVPR 2019): the first two *columns* of ``R`` concatenated, as PyTorch3D;
  * Euler angles ``(..., 3)`` = (pitch about x, yaw about y, roll about z), ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``.
"""
from __future__ import annotations

import torch

from .errors import ShapeError


def _check_last(x: torch.Tensor, n: int, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[-1] != n:
        raise ShapeError(f"{name} must have shape (..., {n}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ShapeError(f"{name} must be floating point, got {x.dtype}")


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrix: ``(..., 3) -> (..., 3, 3)`` with ``skew(a) @ b == cross(a, b)``."""
    _check_last(v, 3, "v")
    z = torch.zeros_like(v[..., 0])
    x, y, w = v.unbind(-1)
    return torch.stack([z, -w, y, w, z, -x, -y, x, z], dim=-1).reshape(v.shape[:-1] + (3, 3))


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, ``(..., 3) -> (..., 3, 3)``; exact gradients at zero (Taylor series near 0)."""
    _check_last(axis_angle, 3, "axis_angle")
    theta2 = (axis_angle * axis_angle).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    a = torch.where(small, 1 - theta2 / 6 + theta2 * theta2 / 120, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2 * theta2 / 720, (1 - torch.cos(theta)) / safe2)
    K = skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand(K.shape)
    return eye + a * K + b * (K @ K)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`axis_angle_to_matrix`, ``(..., 3, 3) -> (..., 3)``, angle in [0, pi].

    Uses the quaternion route (stable near 0 and pi).
    """
    q = matrix_to_quaternion(R)
    return quaternion_to_axis_angle(q)


_QUAT_CANDIDATES = {}


def _quaternion_candidates(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(10, 16)``: Shepperd's candidate matrix ``(4, 4)`` = ``[1, R.flatten()] @ Q`` (rows: the candidate whose
    diagonal entry is ``1 + R00 + R11 + R22``, ``1 + R00 - R11 - R22``, ...; one matrix product, few tensor ops)."""
    key = (dtype, str(device))
    if key not in _QUAT_CANDIDATES:
        def e(*terms):  # terms: (sign, i, j) or (sign, None) for the constant 1
            v = torch.zeros(10, dtype=torch.float64)
            for sg, *ij in terms:
                v[0 if ij[0] is None else 1 + 3 * ij[0] + ij[1]] += sg
            return v
        d0 = e((1, None), (1, 0, 0), (1, 1, 1), (1, 2, 2))
        d1 = e((1, None), (1, 0, 0), (-1, 1, 1), (-1, 2, 2))
        d2 = e((1, None), (-1, 0, 0), (1, 1, 1), (-1, 2, 2))
        d3 = e((1, None), (-1, 0, 0), (-1, 1, 1), (1, 2, 2))
        a21, a02, a10 = e((1, 2, 1), (-1, 1, 2)), e((1, 0, 2), (-1, 2, 0)), e((1, 1, 0), (-1, 0, 1))
        s10, s02, s21 = e((1, 1, 0), (1, 0, 1)), e((1, 0, 2), (1, 2, 0)), e((1, 2, 1), (1, 1, 2))
        rows = [[d0, a21, a02, a10], [a21, d1, s10, s02], [a02, s10, d2, s21], [a10, s02, s21, d3]]
        Q = torch.stack([torch.stack(r, -1) for r in rows], -2)  # (10, 4, 4)
        _QUAT_CANDIDATES[key] = Q.reshape(10, 16).to(dtype=dtype, device=device)
    return _QUAT_CANDIDATES[key]


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """``(..., 3, 3) -> (..., 4)`` quaternion (w, x, y, z) with w >= 0 (Shepperd's method)."""
    if R.shape[-2:] != (3, 3):
        raise ShapeError(f"R must have shape (..., 3, 3), got {tuple(R.shape)}")
    # the four candidate rows of Shepperd's method are fixed linear functions of [1, R_00, R_01, ..., R_22]
    feat = torch.cat([torch.ones_like(R[..., :1, 0]), R.flatten(-2)], -1)  # (..., 10)
    cands = (feat @ _quaternion_candidates(R.dtype, R.device)).unflatten(-1, (4, 4))  # (..., 4, 4)
    diag = cands.diagonal(dim1=-2, dim2=-1)  # 1 + trace-like terms t0..t3
    best = diag.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    scale = 0.5 / torch.gather(diag, -1, best[..., None]).clamp_min(1e-12).sqrt()
    q = q * scale
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` (w, x, y, z) -> ``(..., 3)``."""
    _check_last(q, 4, "q")
    q = torch.where(q[..., :1] < 0, -q, q)
    v = q[..., 1:]
    s = v.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(s, q[..., :1])
    small = s < 1e-6
    factor = torch.where(small, 2.0 / q[..., :1].clamp_min(1e-12), angle / s.clamp_min(1e-12))
    return v * factor


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """``(..., 6) -> (..., 3, 3)`` by Gram-Schmidt; the 6 numbers are the first two columns of R."""
    _check_last(d6, 6, "d6")
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(R: torch.Tensor) -> torch.Tensor:
    """``(..., 3, 3) -> (..., 6)``: the first two columns."""
    if R.shape[-2:] != (3, 3):
        raise ShapeError(f"R must have shape (..., 3, 3), got {tuple(R.shape)}")
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """(pitch, yaw, roll) in radians ``(..., 3) -> (..., 3, 3)``, ``R = Rz(roll) Ry(yaw) Rx(pitch)``."""
    _check_last(angles, 3, "angles")
    p, y, r = angles.unbind(-1)
    one, zero = torch.ones_like(p), torch.zeros_like(p)
    cp, sp, cy, sy, cr, sr = p.cos(), p.sin(), y.cos(), y.sin(), r.cos(), r.sin()
    Rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(p.shape + (3, 3))
    Ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(p.shape + (3, 3))
    Rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(p.shape + (3, 3))
    return Rz @ Ry @ Rx


def matrix_to_euler(R: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`euler_to_matrix` for yaw in (-pi/2, pi/2): ``(..., 3, 3) -> (..., 3)``."""
    if R.shape[-2:] != (3, 3):
        raise ShapeError(f"R must have shape (..., 3, 3), got {tuple(R.shape)}")
    yaw = torch.asin((-R[..., 2, 0]).clamp(-1, 1))
    pitch = torch.atan2(R[..., 2, 1], R[..., 2, 2])
    roll = torch.atan2(R[..., 1, 0], R[..., 0, 0])
    return torch.stack([pitch, yaw, roll], -1)


def rigid_transform(
    points: torch.Tensor,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    scale: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Apply ``x' = scale * R @ x + t`` to ``points (B, N, 3)``.

    Args:
        rotation: ``(B, 3, 3)`` matrix, ``(B, 3)`` axis-angle or ``(B, 6)`` 6D.
        translation: ``(B, 3)``.
        scale: ``(B,)``, a float, or None (1).
    Returns:
        ``(B, N, 3)``.
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ShapeError(f"points must be (B, N, 3), got {tuple(points.shape)}")
    if rotation.shape[-2:] != (3, 3):
        if rotation.shape[-1] == 3:
            rotation = axis_angle_to_matrix(rotation)
        elif rotation.shape[-1] == 6:
            rotation = rotation_6d_to_matrix(rotation)
        else:
            raise ShapeError(f"rotation must be (B, 3, 3), (B, 3) or (B, 6), got {tuple(rotation.shape)}")
    out = points @ rotation.transpose(-1, -2)
    if scale is not None:
        s = torch.as_tensor(scale, dtype=points.dtype, device=points.device)
        out = out * (s.reshape(-1, 1, 1) if s.ndim else s)
    return out + translation.reshape(-1, 1, 3)
