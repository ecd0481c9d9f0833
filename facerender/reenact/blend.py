"""Seamless compositing of a rendered face into a video frame: Poisson (gradient-domain), multi-band and alpha
blending inside an eroded, feathered mask, plus cheap colour transfer.

All images are channel-last ``(B, H, W, C)`` (or unbatched ``(H, W, C)``) floats; masks are ``(B, H, W)`` /
``(H, W)`` bool or float (a float mask is inside where ``> 0.5``). Nothing changes the caller's tensors; the results
carry no gradient history (compositing is post-processing: every function runs under ``torch.no_grad``).

**Where the seam lies.** The mask (typically the rendered face's coverage) is first ERODED by ``erode`` pixels, so
the seam lies on skin a little inside the rendered silhouette, away from hair, background and the tracking error of
the outline. The eroded region is ``Omega``. Pixels outside ``Omega`` keep the target exactly.

**Poisson blending** (:func:`poisson_blend`; Perez et al. 2003, as in Face2Face's final composite): inside
``Omega`` the result ``f`` minimises ``sum over pixel edges (f_p - f_q - v_pq)^2`` with ``f = target`` outside
``Omega``. The guidance ``v`` is the source gradient (``mixed=False``) or, per edge, the larger of the source and the
target gradient (``mixed=True``, magnitude over the colour channels). Written as ``f = source + h``: ``h`` solves the
discrete Laplace (guided) / Poisson (mixed) equation ``sum_q (h_p - h_q) = b_p`` on ``Omega`` with the Dirichlet
values ``h = target - source`` on the pixels around it, so a constant colour offset is removed exactly and the
source gradients are kept up to the smooth membrane ``h``. Image borders are Neumann (no flux): a mask touching the
border is fine. The solver works on the bounding box of ``Omega`` only: a pull-push membrane (the known boundary
values averaged down a pyramid and pushed back up) as the initial guess, then ``iterations`` multigrid V-cycles
(red-black Gauss-Seidel, one pre- and one post-sweep per level, coarse grids down to 16 px, coarse cells that lie
wholly inside ``Omega``). Accuracy and time per iteration are in ``docs/reenactment.md``.

**Multi-band blending** (:func:`multiband_blend`; Burt & Adelson 1983): Laplacian pyramids of source and target
mixed with a pyramid of the feathered mask whose coarse levels stay inside ``Omega``; cheap, hides the seam, but a
colour offset is only spread over the transition, not removed. **Alpha blending** (:func:`alpha_blend`): the
feathered mask only. **Colour transfer** (:func:`color_transfer`): per-channel mean / standard deviation matching in
YCbCr (or CIE Lab through kornia) or a low-frequency gain map, before any of the blends.

Feathering: :func:`feather_mask` ramps linearly from ``1 / feather`` on the outermost pixel of ``Omega`` to 1 at
``feather`` pixels inside (distances by alternating 4- and 8-neighbour erosions, an octagonal approximation of the
Euclidean distance).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError

__all__ = [
    "BlendConfig",
    "BLEND_METHODS",
    "seamless_blend",
    "SeamlessBlender",
    "poisson_blend",
    "multiband_blend",
    "alpha_blend",
    "color_transfer",
    "erode_mask",
    "feather_mask",
    "pull_push_fill",
    "solve_membrane",
]

#: Blend methods of :func:`seamless_blend`.
BLEND_METHODS = ("poisson", "mixed", "multiband", "alpha")
_COLOR_MODES = ("meanstd", "gain")
_COLOR_SPACES = ("ycbcr", "rgb", "lab")
#: Coarsest multigrid level side (pixels).
_MIN_LEVEL = 16


# ------------------------------------------------------------------------------------------------------ inputs
def _shape(x) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_image(x, name: str) -> Tuple[torch.Tensor, bool]:
    """``(B, H, W, C)`` float tensor (unbatched ``(H, W, C)`` gets a batch of 1); returns ``(x, unbatched)``."""
    if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4):
        raise ShapeError(f"{name} must be a (B, H, W, C) or (H, W, C) tensor, got {_shape(x)}")
    if not x.is_floating_point():
        raise ShapeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[-1] < 1 or x.shape[-2] < 1 or x.shape[-3] < 1:
        raise ShapeError(f"{name} is empty: {tuple(x.shape)}")
    return (x[None], True) if x.ndim == 3 else (x, False)


def _check_pair(source, target) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    s, s1 = _check_image(source, "source")
    t, t1 = _check_image(target, "target")
    bad_batch = s.shape[0] != t.shape[0] and 1 not in (s.shape[0], t.shape[0])
    if s.shape[1:] != t.shape[1:] or bad_batch:
        raise ShapeError(f"source and target must have the same (H, W, C) and batch 1 or B, got "
                         f"{tuple(source.shape)} and {tuple(target.shape)}")
    if s.dtype != t.dtype or s.device != t.device:
        raise ShapeError(f"source is {s.dtype} on {s.device} but target is {t.dtype} on {t.device}")
    B = max(s.shape[0], t.shape[0])
    return s.expand(B, *s.shape[1:]), t.expand(B, *t.shape[1:]), s1 and t1


def _check_mask(mask, B: int, H: int, W: int, device, name: str = "mask") -> torch.Tensor:
    """``(B, H, W)`` bool from a ``(B, H, W)`` / ``(H, W)`` / ``(B, H, W, 1)`` bool or float mask (float: ``> 0.5``)."""
    if not isinstance(mask, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor of shape (B, H, W) or (H, W), got {type(mask).__name__}")
    m = mask
    if m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or tuple(m.shape[1:]) != (H, W) or m.shape[0] not in (1, B):
        raise ShapeError(f"{name} must have shape ({B}, {H}, {W}) or ({H}, {W}) to match the images, "
                         f"got {tuple(mask.shape)}")
    if m.dtype != torch.bool:
        if m.is_complex():
            raise ShapeError(f"{name} must be bool or real, got {m.dtype}")
        m = m > 0.5 if m.is_floating_point() else m != 0
    return m.to(device).expand(B, H, W)


def _check_int(value, name: str, lo: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _bchw(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.permute(0, 3, 1, 2).to(dtype).contiguous()


def _bhwc(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).to(dtype)


# ------------------------------------------------------------------------------------------------------- masks
def _erode4(m: torch.Tensor, eight: bool) -> torch.Tensor:
    """One erosion step of a ``(B, 1, H, W)`` bool mask; outside the image counts as inside (no erosion from the
    image border: there is nothing to blend with there)."""
    p = F.pad(m, (1, 1, 1, 1), value=True)
    out = m & p[..., :-2, 1:-1] & p[..., 2:, 1:-1] & p[..., 1:-1, :-2] & p[..., 1:-1, 2:]
    if eight:
        out = out & p[..., :-2, :-2] & p[..., :-2, 2:] & p[..., 2:, :-2] & p[..., 2:, 2:]
    return out


def _erode(m: torch.Tensor, pixels: int) -> torch.Tensor:
    for i in range(pixels):
        m = _erode4(m, eight=bool(i % 2))
    return m


def _ramp(m: torch.Tensor, feather: int, dtype: torch.dtype) -> torch.Tensor:
    """Linear feather ramp of a ``(B, 1, H, W)`` bool mask: ``k / feather`` on the ``k``-th ring inside, 0 outside."""
    if feather <= 1:
        return m.to(dtype)
    acc = m.to(dtype)
    cur = m
    for i in range(1, feather):
        cur = _erode4(cur, eight=bool((i - 1) % 2))
        acc = acc + cur.to(dtype)
    return acc / feather


def erode_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Erode a mask by ``pixels`` (alternating 4- and 8-neighbour steps; the image border does not erode).

    Args:
        mask: ``(B, H, W)`` or ``(H, W)`` bool or float (inside where ``> 0.5``).
        pixels: erosion width (>= 0).
    Returns:
        bool mask of the input's shape.
    """
    pixels = _check_int(pixels, "pixels")
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        raise ShapeError(f"mask must be a (B, H, W) or (H, W) tensor, got {_shape(mask)}")
    m = _check_mask(mask, mask.shape[0] if mask.ndim == 3 else 1, mask.shape[-2], mask.shape[-1], mask.device)
    out = _erode(m[:, None], pixels)[:, 0]
    return out[0] if mask.ndim == 2 else out


def feather_mask(mask: torch.Tensor, erode: int = 0, feather: int = 0, *,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Eroded, feathered alpha of a mask.

    Args:
        mask: ``(B, H, W)`` or ``(H, W)`` bool or float (inside where ``> 0.5``).
        erode: pixels removed from the mask's edge first (the seam moves inwards).
        feather: width of the linear ramp inside the eroded mask (0 or 1: a hard edge).
        dtype: floating dtype of the result.
    Returns:
        ``(B, H, W)`` / ``(H, W)`` alpha in [0, 1]: 0 outside the eroded mask, ``k / feather`` on its ``k``-th pixel
        ring, 1 deeper inside.
    """
    erode = _check_int(erode, "erode")
    feather = _check_int(feather, "feather")
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        raise ShapeError(f"mask must be a (B, H, W) or (H, W) tensor, got {_shape(mask)}")
    m = _check_mask(mask, mask.shape[0] if mask.ndim == 3 else 1, mask.shape[-2], mask.shape[-1], mask.device)
    with torch.no_grad():
        a = _ramp(_erode(m[:, None], erode), feather, dtype)[:, 0]
    return a[0] if mask.ndim == 2 else a


# ----------------------------------------------------------------------------------------------- pull-push fill
def _pull_push(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill ``(B, C, H, W)`` values where ``known (B, 1, H, W)`` is False from the known ones (pull-push).

    Known pixels keep their values exactly; the others get a smooth interpolation (a pyramid of normalised averages,
    pushed back up with bilinear upsampling). Items without any known pixel are filled with 0.
    """
    w = known.to(values.dtype)
    vs, ws = [values * w], [w]
    while vs[-1].shape[-2] > 1 or vs[-1].shape[-1] > 1:
        k = (2 if vs[-1].shape[-2] > 1 else 1, 2 if vs[-1].shape[-1] > 1 else 1)
        vs.append(F.avg_pool2d(vs[-1], k, ceil_mode=True))
        ws.append(F.avg_pool2d(ws[-1], k, ceil_mode=True))
    fill = vs[-1] / ws[-1].clamp_min(1e-12)
    for k in range(len(vs) - 2, -1, -1):
        up = F.interpolate(fill, size=vs[k].shape[-2:], mode="bilinear", align_corners=False)
        own = vs[k] / ws[k].clamp_min(1e-12)
        conf = (ws[k] * 4).clamp_(max=1.0)
        fill = torch.lerp(up, own, conf)
    return fill


def pull_push_fill(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Smoothly fill unknown pixels of an image from the known ones (pull-push interpolation).

    Args:
        values: ``(B, H, W, C)`` / ``(H, W, C)`` float.
        known: ``(B, H, W)`` / ``(H, W)`` bool (float: ``> 0.5``).
    Returns:
        a new tensor like ``values``: equal to it on known pixels, a smooth membrane-like interpolation elsewhere
        (0 for an item without known pixels).
    """
    x, unb = _check_image(values, "values")
    B, H, W, C = x.shape
    k = _check_mask(known, B, H, W, x.device, "known")
    dt = _work_dtype(x)
    with torch.no_grad():
        out = _bhwc(_pull_push(_bchw(x, dt), k[:, None]), x.dtype)
        out = torch.where(k[..., None], x, out)
    return out[0] if unb else out


# --------------------------------------------------------------------------------------------- multigrid solver
def _nbsum(x: torch.Tensor) -> torch.Tensor:
    """Sum of the 4 neighbours, replicating the border (a Neumann boundary for the Laplacian ``4 x - nbsum``)."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    s = p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
    s += p[..., :-2, 1:-1]
    s += p[..., 2:, 1:-1]
    return s


@functools.lru_cache(maxsize=32)
def _checkerboard(H: int, W: int, device: str) -> Tuple[torch.Tensor, torch.Tensor]:
    i = torch.arange(H, device=device)[:, None]
    j = torch.arange(W, device=device)[None]
    cb = (i + j) % 2 == 0
    return cb, ~cb


class _Level:
    __slots__ = ("om", "red", "black")

    def __init__(self, om: torch.Tensor) -> None:
        red, black = _checkerboard(int(om.shape[-2]), int(om.shape[-1]), str(om.device))
        self.om, self.red, self.black = om, om & red, om & black


def _half_sweep(e: torch.Tensor, r: Optional[torch.Tensor], m: torch.Tensor) -> torch.Tensor:
    nb = _nbsum(e)
    if r is not None:
        nb += r
    nb *= 0.25
    return torch.where(m, nb, e)


def _rb(e: torch.Tensor, r: Optional[torch.Tensor], lv: _Level, n: int, reverse: bool = False) -> torch.Tensor:
    a, b = (lv.black, lv.red) if reverse else (lv.red, lv.black)
    for _ in range(n):
        e = _half_sweep(e, r, a)
        e = _half_sweep(e, r, b)
    return e


def _vcycle(r: torch.Tensor, levels: List[_Level], k: int, coarse_sweeps: int = 4) -> torch.Tensor:
    """Approximate solution ``e`` of ``4 e - nbsum(e) = r`` on ``levels[k].om`` with ``e = 0`` outside."""
    lv = levels[k]
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    e = torch.where(lv.red, r * 0.25, zero)  # the first red half-sweep from e = 0
    e = _half_sweep(e, r, lv.black)
    if k == len(levels) - 1:
        e = _rb(e, r, lv, coarse_sweeps - 1)
        return _rb(e, r, lv, coarse_sweeps, reverse=True)
    res = torch.where(lv.om, r - (4 * e - _nbsum(e)), zero)
    ec = _vcycle(F.avg_pool2d(res, 2).mul_(4.0), levels, k + 1, coarse_sweeps)
    up = F.interpolate(ec, scale_factor=2.0, mode="bilinear", align_corners=False)
    e = e + torch.where(lv.om, up, zero)
    return _rb(e, r, lv, 1, reverse=True)


def _levels(om: torch.Tensor, count: int) -> List[_Level]:
    levels = [_Level(om)]
    for _ in range(count):
        o = levels[-1].om
        oc = -F.max_pool2d(-o.to(torch.float32), 2) > 0.5  # coarse cells wholly inside
        if not bool(oc.any()):
            break
        levels.append(_Level(oc))
    return levels


def _solve(d: torch.Tensor, omega: torch.Tensor, rhs: Optional[torch.Tensor], iterations: int) -> torch.Tensor:
    """``x`` with ``x = d`` outside ``omega (B, 1, H, W)`` and ``4 x - nbsum(x) = rhs`` (0 if None) inside.

    Pull-push initial guess, then ``iterations`` V-cycles on the residual equation.
    """
    H, W = d.shape[-2:]
    L = 0
    while min(H, W) >> (L + 1) >= _MIN_LEVEL:
        L += 1
    m = 1 << L
    ph, pw = (-H) % m, (-W) % m
    if ph or pw:  # replicate: a domain touching the bottom / right edge extends into the padding (still Neumann)
        d = F.pad(d, (0, pw, 0, ph), mode="replicate")
        omega = F.pad(omega.to(d.dtype), (0, pw, 0, ph), mode="replicate") > 0.5
        if rhs is not None:
            rhs = F.pad(rhs, (0, pw, 0, ph), value=0.0)
    # the initial guess interpolates only the boundary ring (the pixels outside omega next to it: the only values
    # the equations see), not the whole outside, whose values far from omega are irrelevant and can be anything
    ring = (F.max_pool2d(omega.to(d.dtype), 3, stride=1, padding=1) > 0.5) & ~omega
    x = torch.where(omega, _pull_push(d, ring), d)
    if iterations > 0:
        levels = _levels(omega, L)
        zero = torch.zeros((), dtype=d.dtype, device=d.device)
        for _ in range(iterations):
            r = 4 * x - _nbsum(x)
            r = (rhs - r) if rhs is not None else r.neg_()
            r = torch.where(omega, r, zero)
            x = x + _vcycle(r, levels, 0)
    return x[..., :H, :W]


def solve_membrane(boundary: torch.Tensor, domain: torch.Tensor, rhs: Optional[torch.Tensor] = None, *,
                   iterations: int = 1) -> torch.Tensor:
    """Solve the discrete Laplace / Poisson equation on a masked domain (the core of :func:`poisson_blend`).

    Finds ``x`` with ``x = boundary`` outside ``domain`` and ``sum_q (x_p - x_q) = rhs_p`` (4-neighbours ``q`` in
    the image; Neumann at the image border) inside it, approximately: a pull-push initial guess plus
    ``iterations`` multigrid V-cycles (``iterations=0``: the pull-push membrane alone).

    Args:
        boundary: ``(B, H, W, C)`` / ``(H, W, C)`` Dirichlet values (only those next to the domain matter).
        domain: ``(B, H, W)`` / ``(H, W)`` bool, the unknown pixels.
        rhs: optional ``(B, H, W, C)`` right-hand side (0: a harmonic membrane).
        iterations: V-cycles (>= 0).
    Returns:
        ``(B, H, W, C)`` / ``(H, W, C)``, dtype of ``boundary``, no gradient.
    """
    iterations = _check_int(iterations, "iterations")
    x, unb = _check_image(boundary, "boundary")
    B, H, W, C = x.shape
    om = _check_mask(domain, B, H, W, x.device, "domain")
    dt = _work_dtype(x)
    with torch.no_grad():
        r = None
        if rhs is not None:
            rr, _ = _check_image(rhs, "rhs")
            if rr.shape[1:] != x.shape[1:] or rr.shape[0] not in (1, B):
                raise ShapeError(f"rhs must match boundary {tuple(x.shape)}, got {tuple(rhs.shape)}")
            r = _bchw(rr.expand(B, H, W, C), dt)
        out = _solve(_bchw(x, dt), om[:, None], r, iterations)
        out = _bhwc(out, x.dtype)
    return out[0] if unb else out


def _bbox(m: torch.Tensor, pad: int) -> Tuple[int, int, int, int]:
    """Bounding box ``(top, bottom, left, right)`` (exclusive ends) of a ``(B, 1, H, W)`` mask over the batch, grown
    by ``pad`` and clipped to the image."""
    H, W = m.shape[-2:]
    rows = m.any(-1).reshape(-1, H).any(0)
    cols = m.any(-2).reshape(-1, W).any(0)
    ri = torch.nonzero(rows).flatten()
    ci = torch.nonzero(cols).flatten()
    top, bottom = max(int(ri[0]) - pad, 0), min(int(ri[-1]) + 1 + pad, H)
    left, right = max(int(ci[0]) - pad, 0), min(int(ci[-1]) + 1 + pad, W)
    return top, bottom, left, right


def _mixed_rhs(d: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``b_p = sum_q [|grad t|_pq > |grad s|_pq] (d_p - d_q)`` with ``d = t - s`` (mixed-gradient guidance)."""
    b = torch.zeros_like(d)
    for dim in (-1, -2):
        n = d.shape[dim]
        if n < 2:
            continue
        lo = lambda x: x.narrow(dim, 0, n - 1)  # noqa: E731
        hi = lambda x: x.narrow(dim, 1, n - 1)  # noqa: E731
        gs = (hi(s) - lo(s)).square().sum(1, keepdim=True)
        gt = (hi(t) - lo(t)).square().sum(1, keepdim=True)
        dd = (lo(d) - hi(d)) * (gt > gs).to(d.dtype)  # edge (p = lo, q = hi): d_p - d_q
        b.narrow(dim, 0, n - 1).add_(dd)
        b.narrow(dim, 1, n - 1).sub_(dd)
    return b


# ------------------------------------------------------------------------------------------------------- blends
def poisson_blend(source: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, mixed: bool = False,
                  erode: int = 2, feather: int = 0, iterations: int = 1) -> torch.Tensor:
    """Gradient-domain (Poisson) blending of ``source`` into ``target`` inside the eroded mask.

    Args:
        source: ``(B, H, W, C)`` / ``(H, W, C)`` the image whose gradients are kept (the rendered face).
        target: same shape, dtype and device (the video frame); batch 1 broadcasts.
        mask: ``(B, H, W)`` / ``(H, W)`` bool or float (inside where ``> 0.5``): where the source goes.
        mixed: mixed gradients (per pixel edge the stronger of source and target gradient) instead of the source's.
        erode: pixels the mask is eroded by first (the seam lies that far inside the mask's edge).
        feather: optional linear ramp (pixels) of the result over the target inside the eroded mask (0: none;
            the Poisson solution already meets the target continuously at the seam).
        iterations: multigrid V-cycles after the pull-push initial guess (0: pull-push only; each V-cycle roughly
            halves the remaining error, see ``docs/reenactment.md``).
    Returns:
        ``(B, H, W, C)`` / ``(H, W, C)`` new tensor: the target exactly outside the eroded mask (an empty mask
        returns a copy of the target; a mask covering the whole image has no boundary and returns the source).
    """
    s, t, unb = _check_pair(source, target)
    B, H, W, C = t.shape
    m = _check_mask(mask, B, H, W, t.device)
    erode, feather, iterations = (_check_int(erode, "erode"), _check_int(feather, "feather"),
                                  _check_int(iterations, "iterations"))
    with torch.no_grad():
        out = _poisson(s, t, m, mixed, erode, feather, iterations)
    return out[0] if unb else out


def _poisson(s, t, m, mixed, erode, feather, iterations) -> torch.Tensor:
    dt = _work_dtype(t)
    om = _erode(m[:, None], erode)
    out = t.clone()
    for b in range(t.shape[0]):  # per item: its own bounding box (results do not depend on the batch)
        ob = om[b:b + 1]
        if not bool(ob.any()):
            continue
        top, bottom, left, right = _bbox(ob, 1)
        sc = _bchw(s[b:b + 1, top:bottom, left:right], dt)
        tc = _bchw(t[b:b + 1, top:bottom, left:right], dt)
        oc = ob[..., top:bottom, left:right]
        d = tc - sc
        rhs = _mixed_rhs(d, sc, tc) if mixed else None
        res = sc + _solve(d, oc, rhs, iterations)
        if feather > 1:
            res = torch.lerp(tc, res, _ramp(oc, feather, dt))
        res = torch.where(oc, res, tc)
        out[b:b + 1, top:bottom, left:right] = _bhwc(res, t.dtype)
    return out


def _down(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def multiband_blend(source: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, erode: int = 2,
                    feather: int = 4, levels: Optional[int] = None) -> torch.Tensor:
    """Multi-band (Laplacian pyramid) blending inside the eroded mask.

    Band ``k`` of the result mixes the source's and the target's Laplacian band ``k`` with the feathered mask
    averaged down ``k`` times and set to 0 on coarse cells that are not wholly inside the eroded mask, so the
    transition of every band lies inside the mask and the target is kept exactly outside it.

    Args:
        source, target, mask: as :func:`poisson_blend`.
        erode: pixels the mask is eroded by first.
        feather: linear ramp width (pixels) of the finest band's mask.
        levels: pyramid levels (default: down to about 8 pixels, at most 6).
    Returns:
        a new ``(B, H, W, C)`` / ``(H, W, C)`` tensor, the target exactly outside the eroded mask.
    """
    s, t, unb = _check_pair(source, target)
    B, H, W, C = t.shape
    m = _check_mask(mask, B, H, W, t.device)
    erode, feather = _check_int(erode, "erode"), _check_int(feather, "feather")
    if levels is not None:
        levels = _check_int(levels, "levels", 1)
    with torch.no_grad():
        out = _multiband(s, t, m, erode, feather, levels)
    return out[0] if unb else out


def _multiband(s, t, m, erode, feather, levels) -> torch.Tensor:
    dt = _work_dtype(t)
    om = _erode(m[:, None], erode)
    out = t.clone()
    n = levels if levels is not None else 6
    for bi in range(t.shape[0]):  # per item: its own bounding box
        ob = om[bi:bi + 1]
        if not bool(ob.any()):
            continue
        top, bottom, left, right = _bbox(ob, 1)
        sc = _bchw(s[bi:bi + 1, top:bottom, left:right], dt)
        tc = _bchw(t[bi:bi + 1, top:bottom, left:right], dt)
        oc = ob[..., top:bottom, left:right]
        H, W = sc.shape[-2:]
        L = 0
        while L < n - 1 and min(H, W) >> (L + 1) >= 8:
            L += 1
        mult = 1 << L
        ph, pw = (-H) % mult, (-W) % mult
        a = _ramp(oc, feather, dt)
        inside = oc.to(dt)
        x = torch.cat([sc, tc], 1)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
            a = F.pad(a, (0, pw, 0, ph), mode="replicate")
            inside = F.pad(inside, (0, pw, 0, ph), mode="replicate")
        C = sc.shape[1]
        bands, alphas = [], [a]
        g = x
        for _ in range(L):
            low = _down(g)
            bands.append(g - _up(low))
            g = low
            inside = -F.max_pool2d(-inside, 2)  # coarse cells wholly inside: the transition stays inside
            alphas.append(_down(alphas[-1]) * inside)
        bands.append(g)
        res = None
        for k in range(L, -1, -1):
            band = bands[k]
            mix = torch.lerp(band[:, C:], band[:, :C], alphas[k])
            res = mix if res is None else _up(res) + mix
        res = torch.where(oc, res[..., :H, :W], tc)
        out[bi:bi + 1, top:bottom, left:right] = _bhwc(res, t.dtype)
    return out


def alpha_blend(source: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, erode: int = 2,
                feather: int = 4) -> torch.Tensor:
    """``alpha * source + (1 - alpha) * target`` with ``alpha = feather_mask(mask, erode, feather)``.

    Returns a new ``(B, H, W, C)`` / ``(H, W, C)`` tensor.
    """
    s, t, unb = _check_pair(source, target)
    B, H, W, C = t.shape
    m = _check_mask(mask, B, H, W, t.device)
    erode, feather = _check_int(erode, "erode"), _check_int(feather, "feather")
    with torch.no_grad():
        a = _ramp(_erode(m[:, None], erode), feather, t.dtype)[:, 0, ..., None]
        out = torch.lerp(t, s, a)
    return out[0] if unb else out


# ---------------------------------------------------------------------------------------------- colour transfer
_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                      dtype=torch.float64)


def _to_space(x: torch.Tensor, space: str) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB to the colour space."""
    if space == "rgb":
        return x
    if space == "ycbcr":
        return torch.einsum("ij,bjhw->bihw", _YCBCR.to(x), x)
    import kornia  # a dependency of facerender; imported here to keep ``import facerender.reenact`` light

    return kornia.color.rgb_to_lab(x.clamp(0, 1))


def _from_space(x: torch.Tensor, space: str) -> torch.Tensor:
    if space == "rgb":
        return x
    if space == "ycbcr":
        return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_YCBCR).to(x), x)
    import kornia

    return kornia.color.lab_to_rgb(x)


def color_transfer(source: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, mode: str = "meanstd",
                   space: str = "ycbcr", reference_mask: Optional[torch.Tensor] = None, strength: float = 1.0,
                   max_gain: float = 2.0, scale: int = 16) -> torch.Tensor:
    """Match the colours of ``source`` inside ``mask`` to ``target`` (before blending).

    Modes:

    * ``"meanstd"``: per channel of ``space`` (``"ycbcr"`` default, linear and cheap; ``"lab"``: CIE Lab through
      kornia, about 5 ms per 256^2 round trip; ``"rgb"``), ``(x - mean_s) * std_t / std_s + mean_t`` with the
      statistics of the source over ``mask`` and of the target over ``reference_mask`` (default: ``mask``); the gain
      ``std_t / std_s`` is clamped to ``[1 / max_gain, max_gain]``.
    * ``"gain"``: a low-frequency RGB gain map: the ratio of the target's and the source's local means over ``mask``
      (box averages over ``scale`` x ``scale`` cells, the holes filled by pull-push, bilinear upsampling), clamped to
      ``[1 / max_gain, max_gain]``, times the source: corrects smooth shading differences too.

    Args:
        source: ``(B, H, W, 3)`` / ``(H, W, 3)`` RGB (``"gain"`` and ``"rgb"`` accept any ``C``).
        target: same shape (batch 1 broadcasts).
        mask: ``(B, H, W)`` / ``(H, W)`` where the source is used (and measured).
        mode, space: see above.
        reference_mask: where the target is measured (``"meanstd"`` only; default ``mask``).
        strength: 0 leaves the source unchanged, 1 applies the full correction (linear in between).
        max_gain: clamp of the gains (> 1).
        scale: cell size of the gain map (pixels, ``"gain"``).
    Returns:
        the corrected source (a new tensor, same shape); pixels outside ``mask`` are corrected too (so a later
        feathered blend sees no edge). Items with an empty mask are returned unchanged.
    """
    if mode not in _COLOR_MODES:
        raise ValueError(f"mode must be one of {_COLOR_MODES}, got {mode!r}")
    if space not in _COLOR_SPACES:
        raise ValueError(f"space must be one of {_COLOR_SPACES}, got {space!r}")
    if not isinstance(max_gain, (int, float)) or not max_gain > 1:
        raise ValueError(f"max_gain must be a number > 1, got {max_gain!r}")
    if not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
    scale = _check_int(scale, "scale", 1)
    s, t, unb = _check_pair(source, target)
    B, H, W, C = s.shape
    if mode == "meanstd" and space != "rgb" and C != 3:
        raise ShapeError(f"colour space {space!r} needs 3 channels (RGB), got images {tuple(source.shape)}")
    m = _check_mask(mask, B, H, W, s.device)
    rm = m if reference_mask is None else _check_mask(reference_mask, B, H, W, s.device, "reference_mask")
    dt = _work_dtype(s)
    with torch.no_grad():
        sc, tc = _bchw(s, dt), _bchw(t, dt)
        if mode == "meanstd":
            out = _meanstd(sc, tc, m[:, None].to(dt), rm[:, None].to(dt), space, max_gain, strength)
        else:
            out = _gain(sc, tc, m[:, None].to(dt), max_gain, strength, scale)
        out = _bhwc(out, s.dtype)
    return out[0] if unb else out


def _meanstd(s, t, ms, mt, space, max_gain, strength) -> torch.Tensor:
    xs, xt = _to_space(s, space), _to_space(t, space)
    ns = ms.sum((-2, -1), keepdim=True)
    nt = mt.sum((-2, -1), keepdim=True)
    mu_s = (xs * ms).sum((-2, -1), keepdim=True) / ns.clamp_min(1)
    mu_t = (xt * mt).sum((-2, -1), keepdim=True) / nt.clamp_min(1)
    sd_s = (((xs - mu_s) * ms).square().sum((-2, -1), keepdim=True) / ns.clamp_min(1)).sqrt()
    sd_t = (((xt - mu_t) * mt).square().sum((-2, -1), keepdim=True) / nt.clamp_min(1)).sqrt()
    gain = (sd_t / sd_s.clamp_min(1e-6)).clamp(1 / max_gain, max_gain)
    ok = ((ns > 0) & (nt > 0)).to(s.dtype)
    gain = 1 + strength * ok * (gain - 1)
    shift = strength * ok * (mu_t - mu_s)
    out = (xs - mu_s) * gain + mu_s + shift
    return _from_space(out, space)


def _gain(s, t, m, max_gain, strength, scale) -> torch.Tensor:
    H, W = s.shape[-2:]
    k = max(1, min(scale, H, W))
    ss = F.avg_pool2d(s * m, k, ceil_mode=True)
    tt = F.avg_pool2d(t * m, k, ceil_mode=True)
    w = F.avg_pool2d(m, k, ceil_mode=True)
    known = w > 0.05
    ratio = torch.where(known, tt / ss.clamp_min(1e-4), torch.ones((), dtype=s.dtype, device=s.device))
    ratio = ratio.clamp(1 / max_gain, max_gain).log()
    ratio = torch.where(known, ratio, _pull_push(ratio, known))
    g = F.interpolate(ratio, size=(H, W), mode="bilinear", align_corners=False).mul_(strength).exp_()
    has = (m.sum((-2, -1), keepdim=True) > 0).to(s.dtype)
    return s * (1 + has * (g - 1))


# ------------------------------------------------------------------------------------------------ config, module
@dataclass(frozen=True)
class BlendConfig:
    """Settings of :func:`seamless_blend`.

    Attributes:
        method: ``"poisson"`` (guided gradient-domain, default), ``"mixed"`` (mixed gradients), ``"multiband"``
            (Laplacian pyramid) or ``"alpha"`` (feathered alpha only).
        erode: pixels the mask is eroded by: the seam lies that far inside the rendered silhouette, on skin.
        feather: linear ramp width in pixels (poisson/mixed: optional extra ramp, default 0; multiband/alpha: the
            mask's ramp; the default 0 becomes 4 for those two).
        iterations: multigrid V-cycles of the Poisson solve (after the pull-push initial guess).
        color: None, ``"meanstd"`` or ``"gain"``: a colour transfer of the source first (:func:`color_transfer`,
            measured over the eroded mask).
        color_space: colour space of ``"meanstd"``.
        levels: pyramid levels of ``"multiband"`` (None: automatic).
    """

    method: str = "poisson"
    erode: int = 2
    feather: int = 0
    iterations: int = 1
    color: Optional[str] = None
    color_space: str = "ycbcr"
    levels: Optional[int] = None

    def __post_init__(self) -> None:
        if self.method not in BLEND_METHODS:
            raise ValueError(f"method must be one of {BLEND_METHODS}, got {self.method!r}")
        if self.color is not None and self.color not in _COLOR_MODES:
            raise ValueError(f"color must be None or one of {_COLOR_MODES}, got {self.color!r}")
        if self.color_space not in _COLOR_SPACES:
            raise ValueError(f"color_space must be one of {_COLOR_SPACES}, got {self.color_space!r}")
        _check_int(self.erode, "erode")
        _check_int(self.feather, "feather")
        _check_int(self.iterations, "iterations")
        if self.levels is not None:
            _check_int(self.levels, "levels", 1)


def seamless_blend(source: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                   config: Optional[BlendConfig] = None, **overrides) -> torch.Tensor:
    """Composite ``source`` into ``target`` inside ``mask`` without a visible seam.

    Args:
        source: ``(B, H, W, C)`` / ``(H, W, C)`` rendered face (e.g. the recoloured re-render).
        target: same shape (the target video frame; batch 1 broadcasts).
        mask: ``(B, H, W)`` / ``(H, W)`` bool or float: the rendered face region.
        config: :class:`BlendConfig` (default ``BlendConfig()``: Poisson, 2 px erosion, 1 V-cycle).
        **overrides: fields of the config to replace, e.g. ``method="multiband"``.
    Returns:
        a new tensor like ``target``; the target exactly outside the eroded mask.
    """
    cfg = config if config is not None else BlendConfig()
    if not isinstance(cfg, BlendConfig):
        raise ValueError(f"config must be a BlendConfig, got {type(cfg).__name__}")
    if overrides:
        cfg = replace(cfg, **overrides)
    src = source
    if cfg.color is not None:
        s, t, _ = _check_pair(source, target)
        B, H, W, _ = t.shape
        inner = _erode(_check_mask(mask, B, H, W, t.device)[:, None], cfg.erode)[:, 0]
        src = color_transfer(s, t, inner, mode=cfg.color, space=cfg.color_space)
        if source.ndim == 3 and target.ndim == 3:
            src = src[0]
    if cfg.method in ("poisson", "mixed"):
        return poisson_blend(src, target, mask, mixed=cfg.method == "mixed", erode=cfg.erode, feather=cfg.feather,
                             iterations=cfg.iterations)
    feather = cfg.feather if cfg.feather > 0 else 4
    if cfg.method == "multiband":
        return multiband_blend(src, target, mask, erode=cfg.erode, feather=feather, levels=cfg.levels)
    return alpha_blend(src, target, mask, erode=cfg.erode, feather=feather)


class SeamlessBlender(nn.Module):
    """Module form of :func:`seamless_blend` holding a :class:`BlendConfig`.

    ``forward(source (B, H, W, C), target (B, H, W, C), mask (B, H, W)) -> (B, H, W, C)``.
    """

    def __init__(self, config: Optional[BlendConfig] = None, **overrides) -> None:
        super().__init__()
        cfg = config if config is not None else BlendConfig()
        self.config = replace(cfg, **overrides) if overrides else cfg

    def forward(self, source: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return seamless_blend(source, target, mask, self.config)

    def extra_repr(self) -> str:
        return repr(self.config)
