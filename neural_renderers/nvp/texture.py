"""Neural Voice Puppetry's neural texture and the lower-face region it is composited through.

**The neural texture** (Deferred Neural Rendering, Thies et al. 2019, as Neural Voice Puppetry uses it): a learned
feature image in the mesh's UV layout, ``C = 16`` channels, stored as a Laplacian pyramid of ``L = 4`` resolutions
(``size, size / 2, size / 4, size / 8``) whose bilinear samples are SUMMED: the coarse levels hold what is smooth,
the fine ones the detail, and a texel that is rarely seen still gets a value from its coarser levels. Matched to the
authors' released code (``HierarchicalTexture`` / ``LaplacianPyramid``, read with the code search): four levels
halving each time, ``grid_sample`` bilinear with ``padding_mode="border"``, zero initialisation, the sum of the
levels, and the regulariser ``8 mean(T_0^2) + 2 mean(T_1^2) + 1 mean(T_2^2) + 0 mean(T_3^2)`` (finest first).
Ours differs in three stated ways: one pyramid per UDIM tile (ICT-FaceKit lays its UVs out over tiles 0..5: face and
eyeballs, head / neck / mouth socket / eye sockets, gums and tongue, teeth, the two lacrimal fluids), sampled per
pixel through the rasterised ``"uv"`` (local to the tile, ``v`` up) and ``"uv_tile"`` (tile + 1, 0 background)
maps; the texture convention of :mod:`facerender.render.texture` (``u`` right, ``v`` up, row 0 is ``v = 1``,
``align_corners=False``); and texels stored divided by ``scale`` (the effective Adam step of a texel is ``scale x
lr``, so one learning rate serves the texture and the renderer network).

**The lower-face region.** A per-vertex weight on ICT-FaceKit (:func:`lower_face_weights`: 1 on the lips, chin,
jaw, lower cheeks and upper neck and inside the mouth, fading to 0 at the nostrils, towards the ears and down the
neck) baked into every UV tile (:func:`region_texture`) and sampled through the same UV maps: the region follows the
mesh whatever the expression. :func:`composite_masks` turns the sampled weights into the feathered compositing
alpha and the (larger) hole the renderer must fill.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facerender.errors import ShapeError

__all__ = ["NeuralTexture", "sample_tiled", "lower_face_weights", "region_texture", "composite_masks",
           "REGULARIZER_WEIGHTS", "split_condition", "EYES_REGION"]

#: The region id of the eyeballs in the ``"regions"`` map (:data:`facerender.render.conditioning.REGION_NAMES`).
EYES_REGION = 2

#: The reference code's regulariser weights per level, finest first.
REGULARIZER_WEIGHTS: Tuple[float, ...] = (8.0, 2.0, 1.0, 0.0)


def split_condition(condition: torch.Tensor, eye_slot: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cached ``("uv", "uv_tile"[, "regions"])`` conditioning ``(B, H, W, 3 or 4)`` -> ``(uv (B, H, W, 2), tile (B, H,
    W) int64)``: 0 background, ``k + 1`` texture slot ``k`` (the float16 channels hold small integers exactly).

    ICT-FaceKit lays its eyeballs over the face's UV tile 0 (both span the whole tile), so a texture per UDIM tile
    would give an eyeball and the face the same texels. With the ``"regions"`` channel and ``eye_slot``, pixels of the
    eyes region get slot ``eye_slot`` of their own.
    """
    if condition.ndim != 4 or condition.shape[-1] not in (3, 4):
        raise ShapeError(f"condition must be (B, H, W, 3) = (u, v, tile + 1) or (B, H, W, 4) with the region id, got "
                         f"{tuple(condition.shape)}")
    tile = condition[..., 2].round().long()
    if eye_slot is not None and condition.shape[-1] == 4:
        eyes = (condition[..., 3].round().long() == EYES_REGION) & (tile > 0)
        tile = torch.where(eyes, torch.full_like(tile, int(eye_slot) + 1), tile)
    return condition[..., :2], tile


def sample_tiled(textures: Sequence[torch.Tensor], uv: torch.Tensor, tile: torch.Tensor) -> torch.Tensor:
    """Sample per-tile textures at per-pixel UV coordinates and sum over the given textures (pyramid levels).

    Args:
        textures: ``L`` tensors ``(T, C, h_l, w_l)`` (tile ``k``'s image of level ``l``, row 0 at ``v = 1``).
        uv: ``(B, H, W, 2)`` coordinates local to the pixel's tile (``u`` right, ``v`` up, in [0, 1]).
        tile: ``(B, H, W)`` integer: 0 background, ``k + 1`` UDIM tile ``k``. Tiles ``>= T`` sample nothing.
    Returns:
        ``(B, H, W, C)`` in the textures' dtype: ``sum_l bilinear(textures[l][k], uv)`` (border clamped,
        ``align_corners=False``), 0 on background. Differentiable w.r.t. the textures and ``uv``.
    """
    if not textures:
        raise ValueError("textures is empty")
    T, C = textures[0].shape[:2]
    for t in textures:
        if t.ndim != 4 or t.shape[:2] != (T, C):
            raise ShapeError(f"every texture must be (T={T}, C={C}, h, w), got {tuple(t.shape)}")
    if uv.ndim != 4 or uv.shape[-1] != 2:
        raise ShapeError(f"uv must be (B, H, W, 2), got {tuple(uv.shape)}")
    if tile.shape != uv.shape[:-1]:
        raise ShapeError(f"tile must be (B, H, W) = {tuple(uv.shape[:-1])}, got {tuple(tile.shape)}")
    dt = textures[0].dtype
    B, H, W, _ = uv.shape
    grid = torch.stack([2 * uv[..., 0] - 1, 1 - 2 * uv[..., 1]], -1).to(dt).reshape(-1, 2)
    tid = tile.reshape(-1).long()
    out = torch.zeros(B * H * W, C, dtype=dt, device=uv.device)
    present = torch.unique(tid).tolist()
    for k in present:
        if k < 1 or k > T:
            continue
        idx = torch.nonzero(tid == k)[:, 0]
        g = grid[idx].reshape(1, 1, -1, 2)
        acc = None
        for t in textures:
            s = F.grid_sample(t[k - 1:k], g, mode="bilinear", padding_mode="border", align_corners=False)
            acc = s if acc is None else acc + s
        out = out.index_put((idx,), acc[0, :, 0].transpose(0, 1))
    return out.reshape(B, H, W, C)


class NeuralTexture(nn.Module):
    """A learned UV feature texture: per UDIM tile a Laplacian pyramid of ``levels`` resolutions (see the module
    docstring).

    ``forward(uv (B, H, W, 2), tile (B, H, W)) -> (B, H, W, channels)`` (:func:`sample_tiled`).

    Args:
        channels: feature channels (paper: 16; the first 3 are trained towards the colour, an intermediate output).
        size: finest level's side (texels per tile); the coarser levels halve it.
        levels: pyramid levels (paper / reference code: 4).
        tiles: UDIM tiles with a texture (ICT-FaceKit: 6, tiles 0..5); pixels of other tiles get zero features.
        scale: texels are stored divided by ``scale`` (a per-parameter learning-rate factor under Adam).
    """

    def __init__(self, channels: int = 16, size: int = 256, levels: int = 4, tiles: int = 6, scale: float = 1.0):
        super().__init__()
        if channels < 1 or tiles < 1 or levels < 1:
            raise ValueError(f"channels, tiles and levels must be >= 1, got {channels}, {tiles}, {levels}")
        if size < 2 ** levels or size & (size - 1):
            raise ValueError(f"size must be a power of two >= 2^levels = {2 ** levels}, got {size}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.channels, self.size, self.tiles, self.scale = int(channels), int(size), int(tiles), float(scale)
        self.pyramid = nn.ParameterList([nn.Parameter(torch.zeros(tiles, channels, size >> l, size >> l))
                                         for l in range(levels)])

    @property
    def num_levels(self) -> int:
        return len(self.pyramid)

    def textures(self) -> List[torch.Tensor]:
        """The levels' texel values ``(T, C, size / 2^l, size / 2^l)``, finest first."""
        return [p * self.scale for p in self.pyramid]

    def forward(self, uv: torch.Tensor, tile: torch.Tensor) -> torch.Tensor:
        # sampling is linear: scale the samples, not a copy of every level (39 MB per call at the defaults)
        return sample_tiled(list(self.pyramid), uv.to(self.pyramid[0].dtype), tile) * self.scale

    def regularization(self, weights: Sequence[float] = REGULARIZER_WEIGHTS) -> torch.Tensor:
        """``sum_l w_l mean(T_l^2)`` over the levels (finest first; missing weights are 0)."""
        total = self.pyramid[0].new_zeros(())
        for w, t in zip(weights, self.textures()):
            if w:
                total = total + w * (t * t).mean()
        return total

    @torch.no_grad()
    def image(self, tile: int = 0, channels: Sequence[int] = (0, 1, 2)) -> torch.Tensor:
        """The summed pyramid of one tile at the finest resolution, ``(size, size, len(channels))`` (for display:
        the coarse levels upsampled bilinearly)."""
        ch = list(channels)
        out = None
        for t in self.textures():
            x = t[tile:tile + 1, ch]
            if x.shape[-1] != self.size:
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
            out = x if out is None else out + x
        return out[0].permute(1, 2, 0)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, size={self.size}, levels={self.num_levels}, tiles={self.tiles}, "
                f"scale={self.scale:g}")


# --------------------------------------------------------------------------------------------- lower face
def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def lower_face_weights(model) -> np.ndarray:
    """Per-vertex weight ``(V,)`` in [0, 1] of the region Neural Voice Puppetry re-renders: the mouth and jaw.

    On the model's neutral mesh, with the iBUG-68 landmarks as reference (ICT-FaceKit: cm, y up, z towards the
    viewer): skin vertices weigh ``w_top * w_side * w_neck * w_front`` with ``w_top`` rising from 0 at 0.2 cm above
    the nose's base (landmark 33) to 1 one cm lower (the philtrum), ``w_side`` falling from 1 to 0 over 1.5 cm
    beyond ``|x - x_33|`` = 55 % of the jaw's half-width at the nose (landmarks 2 / 14) growing to 85 % at the chin
    (so the jaw line is inside, the cheeks by the ears are not), ``w_neck`` falling from 1 at 1.5 cm below the chin
    (landmark 8) to 0 at 3 cm below, ``w_front`` 0 behind the ear plane; the mouth interior (mouth socket, gums,
    tongue, teeth) weighs 1, eyes and eyelashes 0. Models without these landmarks or regions raise ValueError.
    """
    lms = getattr(model, "landmarks", {}) or {}
    if "ibug68" not in lms:
        raise ValueError(f"the lower-face region needs the model's iBUG-68 landmarks; model "
                         f"{getattr(model, 'name', '?')!r} has {sorted(lms)}")
    with torch.no_grad():
        v = model().vertices
        lm = model.get_landmarks(v, "ibug68")[0].double().cpu().numpy()
        V = v[0].double().cpu().numpy()
    x, y, z = V[:, 0] - lm[33, 0], V[:, 1], V[:, 2]
    y_top = lm[33, 1] + 0.2
    w_top = _smoothstep((y_top - y) / 1.2)
    half_nose = 0.5 * abs(lm[14, 0] - lm[2, 0])
    half_chin = 0.5 * abs(lm[12, 0] - lm[4, 0]) + 0.5 * abs(lm[10, 0] - lm[6, 0])
    half_chin = max(half_chin, 0.5 * abs(lm[12, 0] - lm[4, 0]))
    s = np.clip((lm[33, 1] - y) / max(lm[33, 1] - lm[8, 1], 1e-6), 0.0, 1.0)  # 0 at the nose base, 1 at the chin
    x_full = (1 - s) * 0.55 * half_nose + s * 0.85 * half_chin
    w_side = _smoothstep(1 - (np.abs(x) - x_full) / 1.5)
    w_neck = _smoothstep(1 - ((lm[8, 1] - 1.5) - y) / 1.5)
    z_ear = 0.5 * (lm[0, 2] + lm[16, 2])
    w_front = _smoothstep((z - z_ear) / 1.5)
    w = w_top * w_side * w_neck * w_front
    regions = getattr(model, "regions", {}) or {}
    for name in ("mouth_socket", "gums_and_tongue", "teeth", "mouth_interior"):
        if name in regions:
            w[regions[name].vertex_ids] = 1.0
    for name, r in regions.items():
        if name.startswith(("eyeball", "eyelashes", "sclera", "iris", "lacrimal", "eye_occlusion", "eye_blend")):
            w[r.vertex_ids] = 0.0
    return w.astype(np.float32)


def region_texture(model, size: int = 128, tiles: int = 6, weights: Optional[np.ndarray] = None,
                   slots: Optional[int] = None) -> torch.Tensor:
    """The per-vertex weights (default :func:`lower_face_weights`) baked into every UV tile: ``(slots, 1, size,
    size)`` float32 (``slots`` default ``tiles``; slots beyond the UDIM tiles, e.g. the eyes' own slot, are 0), texels
    outside the UV charts filled from their neighbours (so bilinear samples near a chart's edge do not fall to 0).
    The eyeballs are not baked (they share tile 0 with the face; :func:`split_condition` gives them their own slot).
    """
    from facerender.render.bake import dilate_texture, render_uv

    if getattr(model, "uvs", None) is None or getattr(model, "faces_uv", None) is None:
        raise ValueError(f"model {getattr(model, 'name', '?')!r} has no UV layout (uvs, faces_uv)")
    w = lower_face_weights(model) if weights is None else np.asarray(weights, np.float32)
    if w.shape != (model.num_vertices,):
        raise ShapeError(f"weights must be (V={model.num_vertices},), got {w.shape}")
    slots = tiles if slots is None else int(slots)
    if slots < tiles:
        raise ValueError(f"slots must be >= tiles = {tiles}, got {slots}")
    out = torch.zeros(slots, 1, size, size)
    attr = torch.as_tensor(w, dtype=torch.float64)[:, None]
    faces = model.faces
    faces_uv = model.faces_uv
    regions = getattr(model, "regions", {}) or {}
    eye_faces = [regions[n].face_ids for n in ("eyeball_left", "eyeball_right") if n in regions]
    if eye_faces:
        keep = np.ones(faces.shape[0], bool)
        for f in eye_faces:
            keep[f[f < len(keep)]] = False
        keep_t = torch.as_tensor(keep)
        faces, faces_uv = faces[keep_t], faces_uv[keep_t]
    for k in range(tiles):
        img, covered = render_uv(attr, faces, model.uvs.double(), faces_uv, size, tile=k)
        if bool(covered.any()):
            img, _ = dilate_texture(img, covered, iterations=4)
        out[k, 0] = img[..., 0].float()
    return out


def composite_masks(weight: torch.Tensor, dilate: float, feather: float, opening: Optional[float] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The compositing alpha and the renderer's hole from sampled region weights.

    Args:
        weight: ``(B, H, W)`` in [0, 1] (the region weight per pixel; 0 off the mesh).
        dilate: pixels the region grows by (a max filter) before feathering.
        feather: Gaussian sigma (pixels) of the alpha's border.
        opening: radius (pixels) of a grey-level opening (min filter, then max filter) applied first: it removes
            specks smaller than the region, e.g. ICT's tiny eyelid-blend patches whose UVs lie over the face's chart
            (default ``dilate``).
    Returns:
        ``alpha (B, H, W)`` in [0, 1]: ``blur(maxfilter(open(weight)))``; ``hole (B, H, W)`` float 0 / 1: where the
        grown region is above 1 % grown further by ``3 * feather + 1`` pixels, so ``alpha`` is 0 outside the hole
        (the renderer sees the real image only where its output is not used).
    """
    if weight.ndim != 3:
        raise ShapeError(f"weight must be (B, H, W), got {tuple(weight.shape)}")
    x = weight[:, None].float()
    o = max(0, int(round(dilate if opening is None else opening)))
    if o:
        x = _max_filter(_max_filter(x, o, minimum=True), o)
    d = max(0, int(round(dilate)))
    if d:
        x = _max_filter(x, d)
    alpha = x
    r = 0
    if feather > 0:
        r = int(math.ceil(3 * feather))
        t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / feather) ** 2)
        k = k / k.sum()
        a = F.pad(x, (r, r, r, r), mode="replicate")
        a = F.conv2d(a, k.view(1, 1, 1, -1))
        alpha = F.conv2d(a, k.view(1, 1, -1, 1))
    hole = _dilate_binary(x > 0.01, r + 1)
    return alpha[:, 0].clamp(0, 1).to(weight.dtype), hole[:, 0].to(weight.dtype)


def _dilate_binary(mask: torch.Tensor, r: int) -> torch.Tensor:
    """``mask (B, 1, H, W)`` bool grown by the ``(2r + 1)^2`` square, as float 0 / 1: the box sum (cumulative sums,
    O(1) per pixel whatever ``r``) is positive."""
    x = mask.to(torch.float64)
    if r <= 0:
        return x.float()
    for dim in (2, 3):
        pad = [0, 0, 0, 0]
        pad[2 * (3 - dim)] = r + 1
        pad[2 * (3 - dim) + 1] = r
        c = torch.cumsum(F.pad(x, pad), dim)
        n = x.shape[dim]
        x = c.narrow(dim, 2 * r + 1, n) - c.narrow(dim, 0, n)
    return (x > 0.5).float()


def _max_filter(x: torch.Tensor, r: int, minimum: bool = False) -> torch.Tensor:
    """Max (or min) over the ``(2r + 1)^2`` square around each pixel of ``x (B, 1, H, W)``, separably (a row pass
    then a column pass: the same result at ``2 (2r + 1)`` comparisons per pixel instead of ``(2r + 1)^2``)."""
    if r <= 0:
        return x
    y = -x if minimum else x
    y = F.max_pool2d(y, (1, 2 * r + 1), stride=1, padding=(0, r))
    y = F.max_pool2d(y, (2 * r + 1, 1), stride=1, padding=(r, 0))
    return -y if minimum else y
