"""Colouring the re-rendered (reenacted) target face from the CURRENT target frame.

A per-vertex albedo looks synthetic inside real video. Face2Face-style reenactment therefore takes the face's colour
from the frame it replaces: every pixel of the reenacted render shows a surface point (triangle + barycentrics);
the same surface point on the target's TRACKED mesh is projected into the current target frame and, where the frame
sees it, its colour is read there. Where the frame does not see the point (occluded, back-facing, behind the tracked
silhouette, or newly exposed, e.g. lips and mouth interior when the reenacted mouth opens wider than the tracked
one) the caller's fallback render (albedo x SH shading) is used, blended smoothly and gain-matched to the
reprojected colours.

Two paths, same result up to resampling:

* **Direct (default)**, :func:`reproject_frame`: per covered pixel of the reenacted render, its triangle ``t`` and
  perspective-correct barycentrics ``b`` (those of the 3D point) give the tracked point ``P = sum_k b_k X_k`` of
  the tracked camera-space corners ``X_k``. From the tracked screen vertices ``(x_k, y_k, z_k)``:
  ``x = sum_k b_k z_k x_k / sum_k b_k z_k`` (its projection; ``sum_k b_k x_k`` for orthographic screen spaces) and
  its depth ``z = sum_k b_k z_k``. The point is VISIBLE when the tracked render (one z-buffer rasterization of the
  tracked mesh, or the caller's) shows the same triangle at ``floor(x, y)`` or a depth within
  ``depth_tolerance * z``, and the tracked coverage eroded by ``margin`` pixels (8-neighbour first: the bilinear
  footprint never reads a pixel outside the tracked face) contains that pixel. The frame is sampled bilinearly
  (pixel centres at +0.5). No texture, no UV layout: one extra rasterization and a gather of the covered pixels.
* **UV round trip**, :func:`frame_texture` + :func:`sample_frame_texture`: the frame baked into the UV layout
  through the tracked mesh (:func:`facerender.render.bake.bake_texture`: visible texels only), sampled with the
  reenacted render's ``uv`` map. Costs the UV rasterization (cacheable), a dense pass over all texels and the
  resampling blur of two bilinear lookups, and covers one UDIM tile per texture. Kept for comparisons and for
  texture accumulation over frames; ``docs/reenactment.md`` has the timings.

:func:`recolor` then mixes the reprojected colours with the fallback: weight ``w`` = the valid mask feathered by
``feather`` pixels (0 on invalid pixels, 1 deeper than ``feather`` inside valid regions); the fallback is first
multiplied by a low-frequency gain map (local means of reprojected / fallback colours over the valid pixels, holes
filled by pull-push) so that newly exposed regions take the frame's skin tone and lighting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError
from ..render.bake import BakedTexture, bake_texture
from ..render.rasterize import Fragments, RasterSettings, rasterize
from ..render.texture import sample_texture
from .blend import _erode, _erode4, _pull_push, _ramp

__all__ = [
    "Reprojection",
    "reproject_frame",
    "recolor",
    "RecolorConfig",
    "FrameReprojector",
    "frame_texture",
    "sample_frame_texture",
]


class Reprojection(NamedTuple):
    """What :func:`reproject_frame` returns.

    Attributes:
        colors: ``(B, H, W, C)`` frame colours of the reenacted render's pixels (0 where not valid).
        valid: ``(B, H, W)`` bool: covered by the reenacted render AND visible in the tracked frame.
        positions: ``(B, H, W, 2)`` where each pixel's surface point lies in the tracked frame (frame pixels, package
            convention; NaN where not covered by the render), or None (:func:`sample_frame_texture`). ``positions -
            pixel centres`` is the motion of the surface between the tracked and the reenacted mesh.
    """

    colors: torch.Tensor
    valid: torch.Tensor
    positions: Optional[torch.Tensor] = None


# ------------------------------------------------------------------------------------------------------ inputs
def _shape(x) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _frame(frame, name: str = "frame") -> Tuple[torch.Tensor, bool]:
    """``(B, H, W, C)`` float frame (uint8 -> float32 / 255); returns ``(frame, unbatched)``."""
    if isinstance(frame, np.ndarray):
        frame = torch.from_numpy(np.ascontiguousarray(frame))
    if not isinstance(frame, torch.Tensor) or frame.ndim not in (3, 4) or frame.shape[-1] < 1:
        raise ShapeError(f"{name} must be a (B, H, W, C) or (H, W, C) image, got {_shape(frame)}")
    if frame.dtype == torch.uint8:
        frame = frame.to(torch.float32) / 255.0
    elif not frame.is_floating_point():
        raise ShapeError(f"{name} must be uint8 or floating point, got {frame.dtype}")
    if frame.shape[-2] == 0 or frame.shape[-3] == 0:
        raise ShapeError(f"{name} is empty: {tuple(frame.shape)}")
    return (frame[None], True) if frame.ndim == 3 else (frame, False)


def _screen(sv, B: int, device, name: str = "tracked_screen_vertices") -> torch.Tensor:
    if isinstance(sv, np.ndarray):
        sv = torch.from_numpy(sv)
    if not isinstance(sv, torch.Tensor) or sv.ndim not in (2, 3) or sv.shape[-1] != 3 or not sv.is_floating_point():
        got = (_shape(sv), sv.dtype) if isinstance(sv, torch.Tensor) else _shape(sv)
        raise ShapeError(f"{name} must be a float (B, V, 3) or (V, 3) tensor of (x_px, y_px, z), got {got}")
    sv = sv[None] if sv.ndim == 2 else sv
    if sv.shape[0] not in (1, B):
        raise ShapeError(f"batch mismatch: {name} has batch {sv.shape[0]} ({tuple(sv.shape)}), the render has {B}")
    return sv.to(device)


def _coverage_margin(cov: torch.Tensor, margin: int) -> torch.Tensor:
    """Erode a ``(B, H, W)`` coverage by ``margin`` px, the first step over 8 neighbours."""
    if margin <= 0:
        return cov
    m = _erode4(cov[:, None], eight=True)
    return _erode(m, margin - 1)[:, 0] if margin > 1 else m[:, 0]


# ----------------------------------------------------------------------------------------------- direct path
def reproject_frame(
    frame: torch.Tensor,
    fragments: Fragments,
    tracked_screen_vertices: torch.Tensor,
    *,
    faces: Optional[torch.Tensor] = None,
    tracked_fragments: Optional[Fragments] = None,
    perspective: Optional[bool] = None,
    depth_tolerance: float = 0.005,
    margin: int = 1,
    backend: str = "torch",
) -> Reprojection:
    """Read the colours of the reenacted render's pixels from the current target frame (the direct path).

    Args:
        frame: ``(B, Hf, Wf, C)`` / ``(Hf, Wf, C)`` target frame, float in [0, 1] or uint8 (converted to float32 /
            255); numpy is accepted.
        fragments: the :class:`~facerender.render.rasterize.Fragments` of the reenacted render ``(B, H, W)`` (e.g.
            ``render_face(...).fragments``), whose ``faces`` index the tracked mesh's vertices too (same topology).
        tracked_screen_vertices: ``(B, V, 3)`` / ``(V, 3)`` the target's TRACKED mesh for this frame in the frame's
            screen space ``(x_px, y_px, z)`` (``camera.to_screen`` of its camera-space vertices).
        faces: ``(F, 3)`` faces of the render (default ``fragments.faces``).
        tracked_fragments: the rasterization of ``tracked_screen_vertices`` with these faces at ``(Hf, Wf)``, if
            the caller has it (saves one rasterization); default: rasterized here (back-face culling).
        perspective: pinhole screen space (projection by ``1 / z`` weights); default
            ``fragments.settings.perspective_correct``.
        depth_tolerance: relative depth tolerance of the visibility test (a point on another triangle than the
            z-buffer's passes when ``|z - z_buffer| <= depth_tolerance * z_buffer``). The default 0.005 is 6 mm for
            a head 127 cm away (``frame_face``): on ICT with ``jawOpen`` 0.3 against a closed tracked mouth it
            lets 4 of 216 mouth-interior pixels through (0.01: 16) and keeps 99.4 % of the valid pixels of 0.01.
        margin: pixels the tracked coverage is eroded by before the test (>= 1 keeps the bilinear footprint on the
            tracked face; larger values also skip the tracked silhouette, where tracking errors put background).
        backend: rasterizer backend for the tracked z-buffer.
    Returns:
        :class:`Reprojection` ``(colors (B, H, W, C) in the frame's float dtype, valid (B, H, W) bool)``; unbatched
        when the frame is unbatched and the render has batch 1. No gradient.
    Raises:
        ShapeError / ValueError stating what was received.
    """
    if not isinstance(fragments, Fragments):
        raise ShapeError(f"fragments must be the Fragments of the reenacted render, got {type(fragments).__name__}")
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"margin must be an int >= 0, got {margin!r}")
    if not isinstance(depth_tolerance, (int, float)) or not depth_tolerance >= 0:
        raise ValueError(f"depth_tolerance must be a number >= 0, got {depth_tolerance!r}")
    img, unb = _frame(frame)
    B, H, W = fragments.triangle_id.shape
    if img.shape[0] not in (1, B):
        raise ShapeError(f"batch mismatch: frame has batch {img.shape[0]} ({tuple(img.shape)}), the render has {B}")
    device = fragments.triangle_id.device
    img = img.to(device)
    Bf, Hf, Wf, C = img.shape
    sv = _screen(tracked_screen_vertices, B, device)
    V = sv.shape[1]
    f = faces if faces is not None else fragments.faces
    if not isinstance(f, torch.Tensor) or f.ndim != 2 or f.shape[1] != 3 or f.is_floating_point():
        raise ShapeError(f"faces must be an integer (F, 3) tensor (or fragments.faces), got {_shape(f)}")
    f = f.to(device=device, dtype=torch.int64)
    if f.numel() and (int(f.min()) < 0 or int(f.max()) >= V):
        raise ShapeError(f"faces index out of range: [{int(f.min())}, {int(f.max())}] for the {V} tracked vertices")
    persp = fragments.settings.perspective_correct if perspective is None else bool(perspective)
    work = img.dtype if img.dtype in (torch.float32, torch.float64) else torch.float32

    with torch.no_grad():
        if tracked_fragments is None:
            settings = RasterSettings(perspective_correct=persp)
            tracked_fragments = rasterize(sv.expand(B, V, 3), f, (Hf, Wf), settings, backend)
        elif (not isinstance(tracked_fragments, Fragments)
              or tuple(tracked_fragments.triangle_id.shape[1:]) != (Hf, Wf)
              or tracked_fragments.triangle_id.shape[0] not in (1, B)):
            got = tuple(tracked_fragments.triangle_id.shape) if isinstance(tracked_fragments, Fragments) \
                else type(tracked_fragments).__name__
            raise ShapeError(f"tracked_fragments must be the Fragments of the tracked mesh at the frame size "
                             f"({B}, {Hf}, {Wf}), got {got}")
        Bt = tracked_fragments.triangle_id.shape[0]
        pix, tri, bary = fragments.packed()
        gdt = torch.promote_types(sv.dtype, bary.dtype)  # geometry in the inputs' precision (float32 is plenty)
        grid = torch.full((B * H * W, 2), -2.0, dtype=gdt, device=device)  # background: off the image
        positions = torch.full((B * H * W, 2), float("nan"), dtype=gdt, device=device)
        valid = torch.zeros(B * H * W, dtype=torch.bool, device=device)
        if pix.numel():
            b = torch.div(pix, H * W, rounding_mode="floor")
            svf = sv.to(gdt).reshape(-1, 3)
            ft = f.t().contiguous()
            bary = bary.to(gdt)
            z = xy = None
            for k in range(3):
                cid = ft[k].index_select(0, tri)
                if sv.shape[0] > 1:
                    cid = cid + b * V
                c = svf.index_select(0, cid)  # (P, 3) corner k of every pixel's triangle
                wz = bary[:, k] * c[:, 2]
                term = (wz if persp else bary[:, k])[:, None] * c[:, :2]
                z = wz if z is None else z + wz  # depth of the surface point in the tracked camera
                xy = term if xy is None else xy + term
            if persp:
                xy = xy / z.clamp_min(1e-30)[:, None]
            px, py = xy[:, 0], xy[:, 1]
            finite = torch.isfinite(px) & torch.isfinite(py)
            col = torch.floor(px.nan_to_num(-1.0)).clamp(-1, Wf).to(torch.int64)
            row = torch.floor(py.nan_to_num(-1.0)).clamp(-1, Hf).to(torch.int64)
            inside = finite & (col >= 0) & (col < Wf) & (row >= 0) & (row < Hf)
            fi = row.clamp(0, Hf - 1) * Wf + col.clamp(0, Wf - 1)
            if Bt > 1:
                fi = fi + b * (Hf * Wf)
            tbuf = tracked_fragments.triangle_id.reshape(-1).to(device).index_select(0, fi)
            zbuf = tracked_fragments.depth.detach().reshape(-1).to(device, gdt).index_select(0, fi)
            cov = _coverage_margin(tracked_fragments.triangle_id.to(device) >= 0, margin).reshape(-1)
            vis = (tbuf == tri) | ((tbuf >= 0) & ((z - zbuf).abs() <= depth_tolerance * zbuf.abs()))
            ok = inside & vis & cov.index_select(0, fi)
            # normalised grid_sample coordinates (pixel centres at +0.5 <=> align_corners=False)
            g = torch.stack([px * (2.0 / Wf) - 1, py * (2.0 / Hf) - 1], -1)
            grid.index_copy_(0, pix, torch.where(ok[:, None], g, torch.full((), -2.0, dtype=gdt, device=device)))
            valid.index_copy_(0, pix, ok)
            positions.index_copy_(0, pix, xy)
        src = img.to(work).permute(0, 3, 1, 2)
        if Bf != B:
            src = src.expand(B, C, Hf, Wf)
        colors = F.grid_sample(src, grid.view(B, H, W, 2).to(work), mode="bilinear", padding_mode="border",
                               align_corners=False).permute(0, 2, 3, 1)
        valid = valid.view(B, H, W)
        colors = torch.where(valid[..., None], colors, torch.zeros((), dtype=work, device=device))
        colors = colors.to(img.dtype)
        positions = positions.view(B, H, W, 2)
    if unb and B == 1:
        return Reprojection(colors[0], valid[0], positions[0])
    return Reprojection(colors, valid, positions)


# ----------------------------------------------------------------------------------------------------- recolor
@dataclass(frozen=True)
class RecolorConfig:
    """Settings of :func:`recolor` / :class:`FrameReprojector`.

    Attributes:
        feather: pixels over which the reprojected colours fade into the fallback at the edge of the valid region.
        match: ``"gain"``: multiply the fallback by the low-frequency gain map of reprojected / fallback colours
            (recommended); None: use the fallback as given.
        scale: cell size of the gain map (pixels).
        max_gain: clamp of the gain (``[1 / max_gain, max_gain]``).
        depth_tolerance, margin: visibility settings of :func:`reproject_frame`.
    """

    feather: int = 3
    match: Optional[str] = "gain"
    scale: int = 16
    max_gain: float = 3.0
    depth_tolerance: float = 0.005
    margin: int = 1

    def __post_init__(self) -> None:
        for name in ("feather", "scale", "margin"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "scale" else 0):
                raise ValueError(f"{name} must be an int >= {1 if name == 'scale' else 0}, got {v!r}")
        if self.match not in (None, "gain"):
            raise ValueError(f"match must be None or 'gain', got {self.match!r}")
        if not isinstance(self.max_gain, (int, float)) or not self.max_gain > 1:
            raise ValueError(f"max_gain must be a number > 1, got {self.max_gain!r}")
        if not isinstance(self.depth_tolerance, (int, float)) or not self.depth_tolerance >= 0:
            raise ValueError(f"depth_tolerance must be a number >= 0, got {self.depth_tolerance!r}")


def _gain_map(colors: torch.Tensor, fallback: torch.Tensor, valid: torch.Tensor, scale: int,
              max_gain: float) -> torch.Tensor:
    """``(B, C, H, W)`` gain: local means of colours / fallback over ``valid (B, 1, H, W)``, holes pulled-pushed."""
    H, W = colors.shape[-2:]
    k = max(1, min(scale, H, W))
    v = valid.to(colors.dtype)
    num = F.avg_pool2d(colors * v, k, ceil_mode=True)
    den = F.avg_pool2d(fallback * v, k, ceil_mode=True)
    w = F.avg_pool2d(v, k, ceil_mode=True)
    known = (w > 0.1) & (den > 1e-3 * w)
    logg = torch.where(known, (num / den.clamp_min(1e-6)).clamp(1 / max_gain, max_gain).log(),
                       torch.zeros((), dtype=colors.dtype, device=colors.device))
    logg = _pull_push(logg, known.all(1, keepdim=True))
    return F.interpolate(logg, size=(H, W), mode="bilinear", align_corners=False).exp_()


def recolor(colors: torch.Tensor, valid: torch.Tensor, fallback: torch.Tensor, mask: Optional[torch.Tensor] = None,
            *, feather: int = 3, match: Optional[str] = "gain", scale: int = 16, max_gain: float = 3.0,
            return_weight: bool = False):
    """Mix reprojected frame colours with a fallback render where the frame does not see the surface.

    Args:
        colors: ``(B, H, W, C)`` / ``(H, W, C)`` reprojected colours (:func:`reproject_frame` or
            :func:`sample_frame_texture`).
        valid: ``(B, H, W)`` / ``(H, W)`` bool, where ``colors`` hold frame colours.
        fallback: ``(B, H, W, C)`` / ``(H, W, C)`` the reenacted face rendered with its albedo and SH light (batch 1
            broadcasts).
        mask: ``(B, H, W)`` / ``(H, W)`` the reenacted render's coverage (default: everywhere). Outside it the result is
            the fallback unchanged.
        feather: width (pixels) of the fade from reprojected colours to the fallback at the valid region's edge.
        match: ``"gain"`` (default) multiplies the fallback by a low-frequency gain map (local means of ``colors`` /
            ``fallback`` over valid pixels in ``scale`` x ``scale`` cells, holes filled by pull-push, clamped to
            ``[1 / max_gain, max_gain]``); None uses the fallback as given.
        scale, max_gain: see ``match``.
        return_weight: also return the weight of the reprojected colours ``(B, H, W)``.
    Returns:
        ``(B, H, W, C)`` / ``(H, W, C)`` (and the weight): ``w * colors + (1 - w) * matched_fallback`` inside
        ``mask``; ``w = 0`` where not valid, so invalid pixels show the (matched) fallback exactly.
    """
    c, unb = _frame(colors, "colors")
    if match not in (None, "gain"):
        raise ValueError(f"match must be None or 'gain', got {match!r}")
    for name, v in (("feather", feather), ("scale", scale)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "scale" else 0):
            raise ValueError(f"{name} must be an int >= {1 if name == 'scale' else 0}, got {v!r}")
    if not isinstance(max_gain, (int, float)) or not max_gain > 1:
        raise ValueError(f"max_gain must be a number > 1, got {max_gain!r}")
    fb, _ = _frame(fallback, "fallback")
    B, H, W, C = c.shape
    if fb.shape[1:] != c.shape[1:] or fb.shape[0] not in (1, B):
        raise ShapeError(f"fallback must have shape ({B}, {H}, {W}, {C}) like colors, got {tuple(fallback.shape)}")
    fb = fb.to(device=c.device, dtype=c.dtype).expand(B, H, W, C)

    def as_mask(m, name):
        if not isinstance(m, torch.Tensor):
            raise ShapeError(f"{name} must be a (B, H, W) / (H, W) tensor, got {_shape(m)}")
        mm = m[None] if m.ndim == 2 else m
        if mm.ndim != 3 or tuple(mm.shape[1:]) != (H, W) or mm.shape[0] not in (1, B):
            raise ShapeError(f"{name} must have shape ({B}, {H}, {W}) or ({H}, {W}), got {tuple(m.shape)}")
        mm = mm if mm.dtype == torch.bool else (mm > 0.5 if mm.is_floating_point() else mm != 0)
        return mm.to(c.device).expand(B, H, W)

    v = as_mask(valid, "valid")
    m = as_mask(mask, "mask") if mask is not None else torch.ones(B, H, W, dtype=torch.bool, device=c.device)
    work = c.dtype if c.dtype in (torch.float32, torch.float64) else torch.float32
    with torch.no_grad():
        v = v & m
        w = _ramp(v[:, None], feather, work)  # (B, 1, H, W)
        fbw = fb.to(work)
        if match == "gain":
            cc = c.permute(0, 3, 1, 2).to(work)
            ff = fbw.permute(0, 3, 1, 2)
            g = _gain_map(cc, ff, v[:, None], scale, max_gain)
            fbw = (ff * g).permute(0, 2, 3, 1)
        out = torch.lerp(fbw, c.to(work), w.permute(0, 2, 3, 1))
        out = torch.where(m[..., None], out, fb.to(work)).to(c.dtype)
        w = w[:, 0]
    if unb:
        out, w = out[0], w[0]
    return (out, w) if return_weight else out


class FrameReprojector(nn.Module):
    """Module holding a :class:`RecolorConfig`: :func:`reproject_frame` then :func:`recolor`.

    ``forward(frame (B, Hf, Wf, 3), fragments, tracked_screen_vertices (B, V, 3), fallback (B, H, W, 3),
    tracked_fragments=None) -> (image (B, H, W, 3), weight (B, H, W))``: the recoloured reenacted face (the
    fallback outside the render's coverage) and the weight of the frame colours.
    """

    def __init__(self, config: Optional[RecolorConfig] = None, backend: str = "torch") -> None:
        super().__init__()
        self.config = config if config is not None else RecolorConfig()
        if not isinstance(self.config, RecolorConfig):
            raise ValueError(f"config must be a RecolorConfig, got {type(self.config).__name__}")
        self.backend = backend

    def forward(self, frame, fragments: Fragments, tracked_screen_vertices, fallback,
                tracked_fragments: Optional[Fragments] = None):
        cfg = self.config
        rep = reproject_frame(frame, fragments, tracked_screen_vertices, tracked_fragments=tracked_fragments,
                              depth_tolerance=cfg.depth_tolerance, margin=cfg.margin, backend=self.backend)
        mask = fragments.mask if rep.valid.ndim == 3 else fragments.mask[0]
        return recolor(rep.colors, rep.valid, fallback, mask, feather=cfg.feather, match=cfg.match,
                       scale=cfg.scale, max_gain=cfg.max_gain, return_weight=True)

    def extra_repr(self) -> str:
        return f"{self.config!r}, backend={self.backend!r}"


# --------------------------------------------------------------------------------------------- UV round trip
def frame_texture(frame, tracked_screen_vertices, faces, uvs, faces_uv, size: Union[int, Tuple[int, int]] = 256,
                  tile: int = 0, *, perspective: bool = True, uv_raster=None, depth_tolerance: float = 0.01,
                  backend: str = "torch") -> BakedTexture:
    """The current frame mapped into the UV layout through the tracked mesh (visible texels only).

    A thin wrapper of :func:`facerender.render.bake.bake_texture` (no fill): see there for the visibility rules.

    Args:
        frame: ``(Hf, Wf, 3)`` / ``(B, Hf, Wf, 3)`` float in [0, 1] or uint8.
        tracked_screen_vertices: ``(V, 3)`` / ``(B, V, 3)`` tracked mesh in the frame's screen space.
        faces: ``(F, 3)``; uvs ``(T, 2)``; faces_uv ``(F, 3)``.
        size: texture side ``Ht = Wt`` or ``(Ht, Wt)``.
        tile: UDIM tile along ``u`` (ICT: 0 = face and eyeballs).
        perspective: pinhole screen space.
        uv_raster: :func:`facerender.render.bake.uv_fragments` of this layout, size and tile (compute it once per
            video).
        depth_tolerance: relative depth tolerance of the visibility test.
        backend: rasterizer backend.
    Returns:
        :class:`~facerender.render.bake.BakedTexture` ``(texture, valid)`` (float for a float frame; uint8 frames are
        converted to float32 first).
    """
    img, _ = _frame(frame)
    if isinstance(frame, torch.Tensor) and frame.ndim == 3 or isinstance(frame, np.ndarray) and frame.ndim == 3:
        img = img[0]
    return bake_texture(img, tracked_screen_vertices, faces, uvs, faces_uv, size, tile=tile, perspective=perspective,
                        depth_tolerance=depth_tolerance, uv_raster=uv_raster, backend=backend)


def sample_frame_texture(texture: torch.Tensor, valid: torch.Tensor, uv: torch.Tensor,
                         mask: Optional[torch.Tensor] = None) -> Reprojection:
    """Sample a frame texture (:func:`frame_texture`) with the reenacted render's UV map.

    Args:
        texture: ``(Ht, Wt, C)`` / ``(B, Ht, Wt, C)`` float.
        valid: ``(Ht, Wt)`` / ``(B, Ht, Wt)`` bool texel validity.
        uv: ``(B, H, W, 2)`` tile-local UVs of the render (``conditioning_maps(..., maps=("uv", "uv_tile"))``).
        mask: ``(B, H, W)`` bool, the pixels of this texture's tile (e.g. ``uv_tile[..., 0] == tile``).
    Returns:
        :class:`Reprojection`: colours and validity (all four bilinear texels valid).
    """
    if not isinstance(texture, torch.Tensor) or not texture.is_floating_point() or texture.ndim not in (3, 4):
        raise ShapeError(f"texture must be a float (Ht, Wt, C) or (B, Ht, Wt, C) tensor, got {_shape(texture)}")
    if not isinstance(valid, torch.Tensor) or tuple(valid.shape) != tuple(texture.shape[:-1]):
        raise ShapeError(f"valid must have shape {tuple(texture.shape[:-1])} like the texture, got {_shape(valid)}")
    if not isinstance(uv, torch.Tensor) or uv.ndim != 4 or uv.shape[-1] != 2:
        raise ShapeError(f"uv must have shape (B, H, W, 2), got {_shape(uv)}")
    with torch.no_grad():
        uvx = uv.to(texture.dtype)
        both = torch.cat([texture, valid.to(texture.dtype)[..., None]], -1)
        s = sample_texture(both, uvx, mask)
        colors, ok = s[..., :-1], s[..., -1] > 0.999
        if mask is not None:
            ok = ok & (mask if mask.ndim == 3 else mask[..., 0]).to(torch.bool)
    return Reprojection(colors, ok)
