"""Spherical-harmonics (SH) lighting: 3 bands, 9 coefficients per colour channel, Lambertian reflectance.

OUR convention (also in docs/rendering.md, "Lighting (spherical harmonics)"):

* Frame: normals are unit vectors in OUR camera space (x right, y down, z forward), so a surface facing the camera
  has the normal ``(0, 0, -1)`` and a light "from the camera" has the direction ``(0, 0, -1)``. Directions point
  from the surface TOWARDS the light.
* Basis (the standard real SH in the order of Ramamoorthi & Hanrahan 2001, "An efficient representation for
  irradiance environment maps"), for ``n = (x, y, z)``::

      k  (l, m)   Y_k(n)
      0  (0,  0)  0.282095                      = 1 / (2 sqrt(pi))
      1  (1, -1)  0.488603 * y                  = sqrt(3 / (4 pi))
      2  (1,  0)  0.488603 * z
      3  (1,  1)  0.488603 * x
      4  (2, -2)  1.092548 * x y                = sqrt(15 / (4 pi))
      5  (2, -1)  1.092548 * y z
      6  (2,  0)  0.315392 * (3 z^2 - 1)        = sqrt(5 / (16 pi))
      7  (2,  1)  1.092548 * x z
      8  (2,  2)  0.546274 * (x^2 - y^2)        = sqrt(15 / (16 pi))

  orthonormal on the unit sphere. Coefficients are ``(B, 9, C)``: ``coeffs[b, k, c]`` is ``L_k`` of channel ``c``.
* The coefficients ``L_k`` describe the incident RADIANCE ``L(w) = sum_k L_k Y_k(w)``. The Lambertian
  (clamped-cosine) kernel gives the irradiance ``E(n) = sum_k A_l(k) L_k Y_k(n)`` with ``A_0 = pi``,
  ``A_1 = 2 pi / 3``, ``A_2 = pi / 4``.
* Shading: ``colour = albedo * E(n) / pi`` (the 1/pi of the Lambertian BRDF IS included). Hence a uniform white
  environment of radiance 1 (``L_0 = 2 sqrt(pi) = 3.544908``, all other ``L_k = 0``; :func:`ambient_light` (1.0))
  gives ``E = pi`` and leaves the albedo unchanged; :func:`directional_light` (d, I) gives colour
  ``~ albedo * I * max(0, n . d)`` (up to the known error of the 9-term approximation: ``E_9(t) / (pi I) =
  3/32 + t/2 + 15/32 t^2`` instead of ``max(0, t)``, ``t = n . d``; worst error 3/32 at ``t = 0``).

Deep3DFaceRecon (``models/bfm.py``, ``compute_color``) is supported by :func:`sh_from_deep3d` / :func:`sh_to_deep3d`:
its 27 ``gamma`` values are channel-major (``gamma.reshape(B, 3, 9)``), ``init_lit = 0.8`` is added to the first
coefficient of each channel, its constants are ``a = (pi, 2 pi / sqrt(3), 2 pi / sqrt(8))`` (not the Lambertian
kernel), ``c`` the same normalisation as ours, its basis has the signs ``(+, -y, +z, -x, +xy, -yz, +, -xz, +)``, its
normals live in its world frame (x right, y up, z towards the camera, i.e. ``n_d3d = diag(1, -1, -1) n_ours``), and
its colour has no 1/pi: ``colour = albedo * sum_k a_l c_k P_k(n_d3d) g_k``. The exact relation is
``L_k = pi * a_l(k) * s_k * g_k / A_l(k)`` with ``s = (1, 1, -1, -1, -1, -1, 1, 1, 1)`` (the D3DFR signs combined
with the frame change).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from morphable_models.errors import ShapeError

__all__ = [
    "SH_CONSTANTS",
    "LAMBERTIAN_KERNEL",
    "DEEP3D_INIT_LIT",
    "sh_basis",
    "sh_irradiance",
    "shade_lambertian",
    "ambient_light",
    "directional_light",
    "sh_from_deep3d",
    "sh_to_deep3d",
    "SHShading",
]

#: Normalisation constants of the 9 basis functions (see the module docstring).
SH_CONSTANTS: Tuple[float, ...] = (
    0.5 / math.sqrt(math.pi),  # 0.282095
    math.sqrt(3.0 / (4 * math.pi)),  # 0.488603
    math.sqrt(3.0 / (4 * math.pi)),
    math.sqrt(3.0 / (4 * math.pi)),
    math.sqrt(15.0 / (4 * math.pi)),  # 1.092548
    math.sqrt(15.0 / (4 * math.pi)),
    math.sqrt(5.0 / (16 * math.pi)),  # 0.315392
    math.sqrt(15.0 / (4 * math.pi)),
    math.sqrt(15.0 / (16 * math.pi)),  # 0.546274
)
#: Band of each of the 9 coefficients.
SH_BAND: Tuple[int, ...] = (0, 1, 1, 1, 2, 2, 2, 2, 2)
#: Lambertian (clamped cosine) kernel per coefficient: A_0 = pi, A_1 = 2 pi / 3, A_2 = pi / 4.
LAMBERTIAN_KERNEL: Tuple[float, ...] = tuple((math.pi, 2 * math.pi / 3, math.pi / 4)[l] for l in SH_BAND)
#: Deep3DFaceRecon's default ``init_lit`` (added to the first coefficient of each channel).
DEEP3D_INIT_LIT = 0.8

# Deep3DFaceRecon's per-band constants ``a`` and our sign per coefficient (its signs times the frame change).
_D3D_A = (math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0))
_D3D_SIGN = (1.0, 1.0, -1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0)
# L_k = _D3D_TO_OURS[k] * g_k
_D3D_TO_OURS = tuple(math.pi * _D3D_A[l] * s / A for l, s, A in zip(SH_BAND, _D3D_SIGN, LAMBERTIAN_KERNEL))


def _check_normals(normals, name: str = "normals") -> None:
    if not isinstance(normals, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor of shape (..., 3), got {type(normals).__name__}")
    if normals.ndim < 1 or normals.shape[-1] != 3:
        raise ShapeError(f"{name} must have shape (..., 3), got {tuple(normals.shape)}")
    if not normals.is_floating_point():
        raise ShapeError(f"{name} must be a floating-point tensor, got {normals.dtype}")


def _check_coeffs(coeffs, ref: torch.Tensor, ref_name: str) -> None:
    if not isinstance(coeffs, torch.Tensor):
        raise ShapeError(f"coeffs must be a torch.Tensor of shape (B, 9, C), got {type(coeffs).__name__}")
    if coeffs.ndim != 3 or coeffs.shape[1] != 9:
        raise ShapeError(f"coeffs must have shape (B, 9, C), got {tuple(coeffs.shape)}")
    if coeffs.dtype != ref.dtype or coeffs.device != ref.device:
        raise ShapeError(f"coeffs are {coeffs.dtype} on {coeffs.device} but {ref_name} are {ref.dtype} on {ref.device}")
    if ref.ndim < 2:
        raise ShapeError(f"{ref_name} must have shape (B, ..., 3), got {tuple(ref.shape)}")
    Bn, Bc = ref.shape[0], coeffs.shape[0]
    if Bn != Bc and Bn != 1 and Bc != 1:
        raise ShapeError(f"batch mismatch: {ref_name} have batch {Bn}, coeffs have batch {Bc}")


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """The 9 real SH basis functions at ``normals``.

    Args:
        normals: ``(..., 3)`` unit vectors (not normalised here; the result is the polynomial of the docstring).
    Returns:
        ``(..., 9)`` in the order ``1, y, z, x, xy, yz, 3z^2 - 1, xz, x^2 - y^2`` times :data:`SH_CONSTANTS`.
    """
    _check_normals(normals)
    x, y, z = normals.unbind(-1)
    c = SH_CONSTANTS
    return torch.stack(
        [
            torch.full_like(x, c[0]),
            c[1] * y,
            c[2] * z,
            c[3] * x,
            c[4] * x * y,
            c[5] * y * z,
            c[6] * (3 * z * z - 1),
            c[7] * x * z,
            c[8] * (x * x - y * y),
        ],
        dim=-1,
    )


def sh_irradiance(normals: torch.Tensor, coeffs: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """Irradiance ``E(n) = sum_k A_l(k) L_k Y_k(n)`` (no 1/pi), per channel.

    Args:
        normals: ``(B, ..., 3)`` in our camera frame (e.g. ``(B, V, 3)`` per vertex or ``(B, H, W, 3)`` per pixel).
        coeffs: ``(B, 9, C)`` radiance SH coefficients (a batch of 1 broadcasts either way).
        normalize: normalise ``normals`` first (interpolated normals are shorter than 1; zero normals stay zero
            direction-less and give the band-0 term only).
    Returns:
        ``(B, ..., C)``.
    """
    _check_normals(normals)
    _check_coeffs(coeffs, normals, "normals")
    if normalize:
        normals = F.normalize(normals, dim=-1, eps=1e-12)
    Y = sh_basis(normals)  # (B, ..., 9)
    kernel = torch.tensor(LAMBERTIAN_KERNEL, dtype=coeffs.dtype, device=coeffs.device)
    L = coeffs * kernel[:, None]  # (B, 9, C)
    Bn = normals.shape[0]
    inner = normals.shape[1:-1]
    B = max(Bn, coeffs.shape[0])
    out = Y.reshape(Bn, -1, 9) @ L  # broadcasts batch 1
    return out.reshape((B,) + inner + (coeffs.shape[-1],))


def shade_lambertian(
    albedo: torch.Tensor, normals: torch.Tensor, coeffs: torch.Tensor, *, normalize: bool = True
) -> torch.Tensor:
    """Lambertian SH shading ``albedo * E(n) / pi``.

    Args:
        albedo: ``(B, ..., C)`` reflectance in [0, 1] (any shape that broadcasts with the irradiance, e.g.
            ``(B, V, C)`` with ``normals (B, V, 3)``).
        normals: ``(B, ..., 3)`` in our camera frame.
        coeffs: ``(B, 9, C)``.
        normalize: see :func:`sh_irradiance`.
    Returns:
        ``(B, ..., C)`` (not clamped).
    """
    if not isinstance(albedo, torch.Tensor) or not albedo.is_floating_point():
        got = albedo.dtype if isinstance(albedo, torch.Tensor) else type(albedo).__name__
        raise ShapeError(f"albedo must be a floating-point tensor (B, ..., C), got {got}")
    E = sh_irradiance(normals, coeffs, normalize=normalize)
    if albedo.dtype != E.dtype or albedo.device != E.device:
        raise ShapeError(f"albedo is {albedo.dtype} on {albedo.device}, normals are {E.dtype} on {E.device}")
    try:
        torch.broadcast_shapes(albedo.shape, E.shape)
    except RuntimeError:
        raise ShapeError(
            f"albedo {tuple(albedo.shape)} does not broadcast with the shading {tuple(E.shape)} "
            f"(normals {tuple(normals.shape)}, coeffs {tuple(coeffs.shape)})"
        ) from None
    return albedo * (E * (1.0 / math.pi))


def _intensity(intensity, batch_size: Optional[int], channels: int, dtype, device, name: str) -> torch.Tensor:
    """Number, ``(B,)`` or ``(B, C)`` -> ``(B, C)``."""
    if isinstance(intensity, torch.Tensor):
        if not intensity.is_floating_point():
            raise ShapeError(f"{name} must be floating point, got {intensity.dtype}")
        t = intensity
    else:
        t = torch.as_tensor(float(intensity), dtype=dtype or torch.get_default_dtype(), device=device)
    if t.ndim == 0:
        t = t.reshape(1, 1)
    elif t.ndim == 1:
        t = t[:, None]
    elif t.ndim != 2:
        raise ShapeError(f"{name} must be a number, (B,) or (B, C), got {tuple(t.shape)}")
    if t.shape[1] not in (1, channels):
        raise ShapeError(f"{name} has {t.shape[1]} channels, expected 1 or {channels}")
    B = batch_size if batch_size is not None else t.shape[0]
    if t.shape[0] not in (1, B):
        raise ShapeError(f"{name} has batch {t.shape[0]}, batch_size is {B}")
    return t.expand(B, channels)


def ambient_light(
    intensity: Union[float, torch.Tensor] = 1.0,
    batch_size: Optional[int] = None,
    channels: int = 3,
    *,
    dtype: Optional[torch.dtype] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> torch.Tensor:
    """Uniform environment light: ``L_0 = 2 sqrt(pi) * intensity``, other coefficients 0.

    Shading with it gives ``albedo * intensity`` for every normal (``E = pi * intensity``).

    Args:
        intensity: a number, ``(B,)`` or ``(B, C)`` tensor (a tensor sets dtype/device and stays differentiable).
        batch_size: ``B`` (default: the batch of ``intensity``, else 1).
        channels: ``C``.
    Returns:
        ``(B, 9, C)``.
    """
    I = _intensity(intensity, batch_size, channels, dtype, device, "intensity")
    out = torch.zeros(I.shape[0], 9, channels, dtype=I.dtype, device=I.device)
    return torch.cat([(2 * math.sqrt(math.pi) * I)[:, None], out[:, 1:]], dim=1)


def directional_light(
    direction: torch.Tensor,
    intensity: Union[float, torch.Tensor] = 1.0,
    channels: int = 3,
) -> torch.Tensor:
    """SH projection of a distant directional light.

    The light's radiance is a delta in ``direction`` (normalised here; pointing from the surface TOWARDS the light,
    in our camera frame: ``(0, 0, -1)`` is a light at the camera) with irradiance ``pi * intensity`` at normal
    incidence, so that ``shade_lambertian`` gives ``~ albedo * intensity * max(0, n . d)``:
    ``L_k = pi * intensity * Y_k(d)``.

    Args:
        direction: ``(B, 3)`` or ``(3,)``.
        intensity: a number, ``(B,)`` or ``(B, C)``.
        channels: ``C``.
    Returns:
        ``(B, 9, C)``.
    """
    _check_normals(direction, "direction")
    if direction.ndim == 1:
        direction = direction[None]
    if direction.ndim != 2:
        raise ShapeError(f"direction must have shape (B, 3) or (3,), got {tuple(direction.shape)}")
    d = F.normalize(direction, dim=-1, eps=1e-12)
    Y = sh_basis(d)  # (B, 9)
    I = _intensity(intensity, None, channels, d.dtype, d.device, "intensity")
    if I.dtype != d.dtype or I.device != d.device:
        raise ShapeError(f"intensity is {I.dtype} on {I.device}, direction is {d.dtype} on {d.device}")
    B = max(Y.shape[0], I.shape[0])
    if Y.shape[0] not in (1, B) or I.shape[0] not in (1, B):
        raise ShapeError(f"batch mismatch: direction has batch {Y.shape[0]}, intensity has batch {I.shape[0]}")
    return math.pi * Y[:, :, None] * I[:, None, :]


def sh_from_deep3d(gamma: torch.Tensor, init_lit: float = DEEP3D_INIT_LIT) -> torch.Tensor:
    """Deep3DFaceRecon lighting ``gamma (B, 27)`` -> our coefficients ``(B, 9, 3)``.

    ``shade_lambertian(albedo, n, sh_from_deep3d(gamma))`` equals Deep3DFaceRecon's
    ``compute_color(albedo, n_d3d, gamma)`` for ``n_d3d = n * (1, -1, -1)`` (its world frame, see the module
    docstring), including its ``init_lit`` offset. Pass ``init_lit=0`` for gamma values that already include it.
    """
    if not isinstance(gamma, torch.Tensor) or gamma.ndim != 2 or gamma.shape[1] != 27:
        got = tuple(gamma.shape) if isinstance(gamma, torch.Tensor) else type(gamma).__name__
        raise ShapeError(f"gamma must have shape (B, 27), got {got}")
    if not gamma.is_floating_point():
        raise ShapeError(f"gamma must be floating point, got {gamma.dtype}")
    g = gamma.reshape(-1, 3, 9).transpose(1, 2)  # (B, 9, 3)
    offset = torch.zeros(9, 1, dtype=g.dtype, device=g.device)
    offset[0] = init_lit
    scale = torch.tensor(_D3D_TO_OURS, dtype=g.dtype, device=g.device)[:, None]
    return (g + offset) * scale


def sh_to_deep3d(coeffs: torch.Tensor, init_lit: float = DEEP3D_INIT_LIT) -> torch.Tensor:
    """Inverse of :func:`sh_from_deep3d`: ``(B, 9, 3)`` -> Deep3DFaceRecon ``gamma (B, 27)`` (``init_lit`` removed)."""
    if not isinstance(coeffs, torch.Tensor) or coeffs.ndim != 3 or coeffs.shape[1:] != (9, 3):
        got = tuple(coeffs.shape) if isinstance(coeffs, torch.Tensor) else type(coeffs).__name__
        raise ShapeError(f"coeffs must have shape (B, 9, 3), got {got}")
    if not coeffs.is_floating_point():
        raise ShapeError(f"coeffs must be floating point, got {coeffs.dtype}")
    scale = torch.tensor(_D3D_TO_OURS, dtype=coeffs.dtype, device=coeffs.device)[:, None]
    g = coeffs / scale
    offset = torch.zeros(9, 1, dtype=g.dtype, device=g.device)
    offset[0] = init_lit
    return (g - offset).transpose(1, 2).reshape(-1, 27)


class SHShading(nn.Module):
    """Module form of :func:`shade_lambertian` (holds the ``normalize`` setting).

    ``forward(albedo (B, ..., C), normals (B, ..., 3), coeffs (B, 9, C)) -> (B, ..., C)``.
    """

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize

    def forward(self, albedo: torch.Tensor, normals: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        return shade_lambertian(albedo, normals, coeffs, normalize=self.normalize)

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"
