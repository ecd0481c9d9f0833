"""Conditioning rendered once per (track, settings) and cached on disk in chunks.

:func:`build_cache` streams a tracked video once: per frame it cuts the stable face crop
(:func:`~neural_renderers.data.crops.stable_crop_boxes`) out of the video frame and renders, in the same crop's
camera, the conditioning maps of :func:`facerender.render.conditioning.conditioning_maps` from the tracked
parameters (identity, expression with gaze and blinks, pose, SH light, albedo). It writes, per chunk of
``chunk_size`` frames::

    cond_<k>.npy   (n, S, S, C) uint8 or float16 (``settings.storage``): the maps, concatenated in the order of
                                        ``settings.maps`` (Deep Video Portraits: shaded RGB, correspondence XYZ,
                                        gaze RGB: C = 9)
    real_<k>.npy   (n, S, S, 3) uint8   the real face crops

and, last, ``meta.json`` (settings, crop boxes, which frames have a tracked face, the video's fingerprint). Every
file is written atomically; a build that is stopped resumes at the first missing chunk. Epochs then read (memory
maps, one chunk at a time), they never re-render, and memory does not grow with the video's length.

Storage ``"uint8"`` (the default, for maps in [0, 1]): colour and gaze maps lose nothing a video would keep; the
correspondence image is quantised to 1/255 of the template's bounding box (about 1 mm on ICT-FaceKit).
Storage ``"float16"`` keeps texture coordinates precise (``"uv"``: 1/2048 of the texture, a texel of a 2048^2 texture)
and holds the integer maps ``"uv_tile"`` (the UDIM tile + 1, 0 on the background) and ``"regions"`` (the region id):
Neural Voice Puppetry's neural texture is sampled through them. :func:`quantize` / :func:`dequantize` convert.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from facerender.io.atomic import atomic_write

from ..errors import DatasetError
from .crops import CropBoxes, CropReference, crop_boxes_from_pose, crop_reference
from .source import TrackedVideo

log = logging.getLogger(__name__)

__all__ = ["ConditioningSettings", "ConditioningCache", "ConditioningRenderer", "build_cache", "render_conditioning",
           "quantize", "dequantize", "CACHE_VERSION", "MAP_CHANNELS", "FLOAT16_MAPS"]

#: 2: batches of exactly 3 frames were rendered with a misread pose in version 1 (fixed in 739a093); a build never
#: reuses a version-1 cache (the version is part of the cache key), opening one for reading still works.
CACHE_VERSION = 2
#: Channels of each conditioning map.
MAP_CHANNELS: Dict[str, int] = {"shaded": 3, "albedo": 3, "normals": 3, "correspondence": 3, "gaze": 3, "mask": 1,
                                "landmark_image": 1, "regions_onehot": 5, "uv": 2, "uv_tile": 1, "regions": 1}
#: Maps that need ``storage="float16"`` (integer ids, or coordinates that 8 bits would blur).
FLOAT16_MAPS = frozenset({"uv", "uv_tile", "regions"})


@dataclass(frozen=True)
class ConditioningSettings:
    """What is rendered (and hence the cache key).

    Attributes:
        size: side of the square crops and maps (pixels).
        maps: conditioning maps, in channel order (Deep Video Portraits: shaded, correspondence, gaze).
        crop_scale, crop_offset, crop_sigma: see :func:`~neural_renderers.data.crops.stable_crop_boxes`.
        chunk_size: frames per chunk file.
        storage: ``"uint8"`` or ``"float16"`` (see the module docstring).
        antialias: antialias the silhouettes of the colour render.
        batch: frames rendered together.
    """

    size: int = 256
    maps: Tuple[str, ...] = ("shaded", "correspondence", "gaze")
    crop_scale: float = 1.7
    crop_offset: float = 0.02
    crop_sigma: float = 1.5
    chunk_size: int = 64
    storage: str = "uint8"
    antialias: bool = True
    batch: int = 8

    def __post_init__(self):
        if self.size < 8:
            raise ValueError(f"size must be >= 8, got {self.size}")
        bad = [m for m in self.maps if m not in MAP_CHANNELS]
        if bad or not self.maps:
            raise ValueError(f"unsupported conditioning maps {bad or list(self.maps)}; choose from "
                             f"{sorted(MAP_CHANNELS)}")
        if self.storage not in ("uint8", "float16"):
            raise ValueError(f"storage must be 'uint8' or 'float16', got {self.storage!r}")
        need = sorted(FLOAT16_MAPS.intersection(self.maps))
        if need and self.storage != "float16":
            raise ValueError(f"maps {need} need storage='float16' (uint8 holds values in [0, 1] at 1/255 steps)")
        if self.chunk_size < 1 or self.batch < 1:
            raise ValueError(f"chunk_size and batch must be >= 1, got {self.chunk_size}, {self.batch}")

    @property
    def channels(self) -> int:
        return sum(MAP_CHANNELS[m] for m in self.maps)

    def key(self) -> Dict[str, object]:
        d = asdict(self)
        d.pop("batch")  # how many frames are rendered together does not change the result
        d["maps"] = list(self.maps)
        return d


class ConditioningRenderer:
    """Renders conditioning maps for one tracked video's identity, albedo and camera, in square crops' cameras:
    ``renderer(expression (B, K), rotation (B, 3), translation (B, 3), sh (B, 9, 3), centres (B, 2), sides (B,))
    -> (B, S, S, C)`` float in [0, 1] on ``device`` (the maps of ``settings.maps`` concatenated)."""

    def __init__(self, model, track, settings: ConditioningSettings, device: Union[str, torch.device] = "cpu"):
        from facerender.render.conditioning import region_albedo
        from facerender.tracking.tracker import model_with_identity

        dt = torch.float32
        self.device = torch.device(device)
        m = model.to(device=self.device, dtype=dt)
        idt = torch.as_tensor(np.asarray(track.identity), dtype=dt, device=self.device)
        self.model = model_with_identity(m, idt) if idt.numel() == m.num_identity else m
        albedo = region_albedo(self.model)
        if track.albedo is not None and "face" in self.model.regions:
            fid = torch.as_tensor(self.model.regions["face"].vertex_ids, device=self.device)
            if track.albedo.shape[0] == fid.numel():
                albedo[fid] = torch.as_tensor(track.albedo, dtype=dt, device=self.device)
        self.albedo = albedo
        self.track = track
        self.settings = settings
        names = list(self.model.expression_names)
        if list(track.expression_names) != names:
            raise DatasetError(f"the track was made with another expression set ({len(track.expression_names)} "
                               f"expressions) than the model {self.model.name!r} ({len(names)})")

    @torch.no_grad()
    def __call__(self, expression: np.ndarray, rotation: np.ndarray, translation: np.ndarray, sh: np.ndarray,
                 centres: np.ndarray, sides: np.ndarray) -> torch.Tensor:
        """Maps of ``B`` frames: ``(B, S, S, C)`` float in [0, 1]."""
        from facerender.cameras import PinholeCamera
        from facerender.render.conditioning import conditioning_maps

        S = self.settings.size
        tr = self.track
        B = len(expression)
        T = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=self.device)  # noqa: E731
        s = S / np.asarray(sides, np.float64)
        x0 = np.asarray(centres)[:, 0] - np.asarray(sides) / 2
        y0 = np.asarray(centres)[:, 1] - np.asarray(sides) / 2
        f = float(tr.focal)
        cam = PinholeCamera(fx=T(f * s), fy=T(f * s), cx=T((tr.principal_point[0] - x0) * s),
                            cy=T((tr.principal_point[1] - y0) * s), image_size=(S, S))
        out = self.model(expression=T(expression).reshape(B, -1))
        maps = conditioning_maps(self.model, out, cam, T(rotation).reshape(B, 3), T(translation).reshape(B, 3), sh=T(sh).reshape(B, 9, 3),
                                 albedo=self.albedo, maps=self.settings.maps, antialias=self.settings.antialias)
        parts = []
        for m in self.settings.maps:
            x = maps[m]
            if m == "uv_tile":
                x = x + 1  # 0 = background, k + 1 = UDIM tile k
            parts.append(x.to(torch.float32))
        return torch.cat(parts, -1)


def quantize(maps: torch.Tensor, storage: str = "uint8") -> np.ndarray:
    """Float maps -> the cache's storage: uint8 ``round(255 clamp(x, 0, 1))`` or float16. Inference quantises the
    same way, so a network sees at test time exactly the values it was trained on."""
    if storage == "uint8":
        return (maps.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    if storage == "float16":
        return maps.detach().cpu().numpy().astype(np.float16)
    raise ValueError(f"storage must be 'uint8' or 'float16', got {storage!r}")


def dequantize(arr: np.ndarray) -> np.ndarray:
    """The cache's uint8 (``/ 255``) or float16 values as float32."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return arr.astype(np.float32)


def render_conditioning(model, track, settings: ConditioningSettings, boxes: CropBoxes, *, expression=None,
                        rotation=None, translation=None, sh=None, frames: Optional[Sequence[int]] = None
                        ) -> torch.Tensor:
    """Render conditioning of a track's frames (or of parameters given per output frame, for reenactment).

    Args:
        model: the face model of the track.
        track: the :class:`~facerender.tracking.Track` (identity, albedo, camera).
        settings: :class:`ConditioningSettings`.
        boxes: the crops (one per entry of ``frames``, or per row of the given parameters).
        expression ``(B, K)``, rotation ``(B, 3)``, translation ``(B, 3)``, sh ``(B, 9, 3)``: parameters to render
            (default: the track's rows ``frames``).
        frames: track rows to render (default all, or ``range(B)``).
    Returns:
        ``(B, S, S, C)`` float maps in [0, 1].
    """
    r = ConditioningRenderer(model, track, settings)
    idx = np.arange(len(track)) if frames is None else np.asarray(frames)
    e = track.expression[idx] if expression is None else np.asarray(expression)
    R = track.rotation[idx] if rotation is None else np.asarray(rotation)
    t = track.translation[idx] if translation is None else np.asarray(translation)
    L = track.sh[idx] if sh is None else np.asarray(sh)
    return r(e, R, t, L, boxes.centre, boxes.side)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ConditioningCache:
    """An opened cache folder (see the module docstring). Read-only; safe to share with DataLoader workers (each
    process opens its own memory maps on first access)."""

    folder: Path
    meta: Dict[str, object]
    _maps: Dict[Tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, folder: Union[str, Path]) -> "ConditioningCache":
        folder = Path(folder)
        p = folder / "meta.json"
        if not p.is_file():
            raise DatasetError(f"{str(folder)!r} is not a complete conditioning cache (no meta.json)")
        meta = json.loads(p.read_text())
        if meta.get("version") not in range(1, CACHE_VERSION + 1):
            raise DatasetError(f"{str(folder)!r} has cache version {meta.get('version')}, this facerender reads "
                               f"1 to {CACHE_VERSION}")
        return cls(folder, meta)

    def __getstate__(self):
        return {"folder": self.folder, "meta": self.meta, "_maps": {}}

    @property
    def num_frames(self) -> int:
        return int(self.meta["frames"])

    @property
    def size(self) -> int:
        return int(self.meta["settings"]["size"])

    @property
    def channels(self) -> int:
        return int(self.meta["channels"])

    @property
    def valid(self) -> np.ndarray:
        """``(N,)`` bool: frames with a tracked face."""
        return np.asarray(self.meta["valid"], dtype=bool)

    @property
    def crop_reference(self) -> CropReference:
        r = self.meta["crop_reference"]
        return CropReference(tuple(r["head_point"]), float(r["side"]), float(r["depth"]))

    @property
    def boxes(self) -> CropBoxes:
        return CropBoxes(np.asarray(self.meta["crop_centre"], np.float64), np.asarray(self.meta["crop_side"],
                                                                                      np.float64))

    def _chunk(self, kind: str, k: int) -> np.ndarray:
        key = (kind, k)
        arr = self._maps.get(key)
        if arr is None:
            arr = np.load(self.folder / f"{kind}_{k:05d}.npy", mmap_mode="r")
            self._maps[key] = arr
        return arr

    def read(self, kind: str, frame: int) -> np.ndarray:
        """``(S, S, C)`` of one frame as stored (uint8 / float16); ``kind`` is ``"cond"`` or ``"real"``."""
        cs = int(self.meta["settings"]["chunk_size"])
        return np.asarray(self._chunk(kind, frame // cs)[frame % cs])


def _cache_root(track_dir: Optional[Path], cache_dir: Optional[Path]) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if track_dir is not None:
        return track_dir / "neural_cache"
    raise ValueError("give cache_dir when the track has no folder")


def build_cache(source: TrackedVideo, model, settings: ConditioningSettings, *,
                cache_dir: Optional[Union[str, Path]] = None, progress: bool = True) -> ConditioningCache:
    """Render and cache the conditioning and the real crops of a tracked video (or open the existing cache).

    Args:
        source: the video and its track (:class:`~neural_renderers.data.source.TrackedVideo`, fingerprint checked).
        model: the face model the track was made with.
        settings: :class:`ConditioningSettings`.
        cache_dir: parent folder of the caches (default ``<track folder>/neural_cache``); the cache itself is the
            subfolder named by the hash of (settings, track, video).
        progress: progress bar.
    Returns:
        the opened :class:`ConditioningCache`.
    """
    from facerender.fitting.fit_image import crop_face
    from facerender.io.video import VideoReader

    track = source.track
    key = {"settings": settings.key(), "track": source.track_fingerprint, "video": source.fingerprint,
           "model": [getattr(model, "name", "?"), int(model.num_vertices), int(model.num_expression)],
           "version": CACHE_VERSION}
    folder = _cache_root(source.track_dir, Path(cache_dir) if cache_dir else None) / _hash(key)
    if (folder / "meta.json").is_file():
        return ConditioningCache.open(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from .crops import _valid

    ref = crop_reference(track, model, scale=settings.crop_scale)
    boxes = crop_boxes_from_pose(track.rotation, track.translation, track.focal, track.principal_point, ref,
                                 _valid(track), vertical_offset=settings.crop_offset, sigma=settings.crop_sigma)
    N = len(track)
    valid = np.asarray(track.face_found, dtype=bool) & np.isfinite(track.expression).all(1) \
        & np.isfinite(track.rotation).all(1) & np.isfinite(track.translation).all(1)
    cs, S, C = settings.chunk_size, settings.size, settings.channels
    n_chunks = (N + cs - 1) // cs
    done = [k for k in range(n_chunks)
            if (folder / f"cond_{k:05d}.npy").is_file() and (folder / f"real_{k:05d}.npy").is_file()]
    start_chunk = 0
    while start_chunk in done:
        start_chunk += 1
    renderer = ConditioningRenderer(model, track, settings)
    bar = None
    if progress and start_chunk < n_chunks:
        from facerender.progress import progress_bar as tqdm

        bar = tqdm(total=N, initial=start_chunk * cs, unit="frame", desc="conditioning")
    t0 = time.perf_counter()
    reader = VideoReader(source.video)
    cond = np.zeros((cs, S, S, C), np.uint8 if settings.storage == "uint8" else np.float16)
    real = np.zeros((cs, S, S, 3), np.uint8)
    pending: list = []

    def flush_render():
        idx = np.asarray(pending)
        ok = idx[valid[idx]]
        if ok.size:
            maps = renderer(track.expression[ok], track.rotation[ok], track.translation[ok], track.sh[ok],
                            boxes.centre[ok], boxes.side[ok])
            cond[ok % cs] = quantize(maps, settings.storage)
        bad = idx[~valid[idx]]
        cond[bad % cs] = 0
        pending.clear()

    def write_chunk(k: int, n: int):
        for kind, arr in (("cond", cond), ("real", real)):
            with atomic_write(folder / f"{kind}_{k:05d}.npy") as tmp:
                np.save(tmp, arr[:n])

    first = start_chunk * cs
    last_written = start_chunk - 1
    i = first - 1
    try:
        for fr in reader:
            i = fr.index
            if i < first:
                continue
            if i >= N:
                break
            real[i % cs] = (crop_face(torch.from_numpy(fr.image), boxes.centre[i], float(boxes.side[i]), S)
                            .clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
            pending.append(i)
            if len(pending) == settings.batch or i % cs == cs - 1 or i == N - 1:
                flush_render()
            if i % cs == cs - 1 or i == N - 1:
                write_chunk(i // cs, i % cs + 1)
                last_written = i // cs
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if last_written != n_chunks - 1:
        raise DatasetError(f"{str(source.video)!r} ended after {i + 1} frames but its track has {N}: the track does "
                           f"not match the video")
    meta = {"version": CACHE_VERSION, "key": key, "settings": {**settings.key(), "batch": settings.batch},
            "channels": C, "frames": N, "fps": float(track.fps), "video": str(source.video),
            "track": str(source.track_dir) if source.track_dir else None, "image_size": list(track.image_size),
            "valid": valid.astype(int).tolist(), "crop_centre": boxes.centre.tolist(),
            "crop_side": boxes.side.tolist(),
            "crop_reference": {"head_point": list(ref.head_point), "side": ref.side, "depth": ref.depth},
            "render_seconds": time.perf_counter() - t0,
            "channel_layout": {m: MAP_CHANNELS[m] for m in settings.maps}}
    with atomic_write(folder / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta))
    return ConditioningCache.open(folder)
