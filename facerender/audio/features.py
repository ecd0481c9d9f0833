"""Speech features aligned to video frames: per frame a window of feature steps centred on the frame's time.

* :func:`compute_features`: a media file (streamed) or samples in memory -> :class:`AudioFeatures` (log-mel steps,
  per-step level and activity, and flags: silent, speech-like, band-limited).
* :func:`frame_times` / :func:`frame_windows`: the exact time of each video frame and its ``(steps, D)`` window.
* :func:`save_features` / :func:`load_features`: the ``.npz`` format for features computed elsewhere (DeepSpeech,
  wav2vec 2.0, HuBERT ...), documented in ``docs/neural_voice_puppetry.md``:

  ======================  =====================================================================================
  key                     meaning
  ======================  =====================================================================================
  ``features``            ``(T, D)`` float: step ``s`` describes the time ``[start + s / rate, start + (s+1) / rate)``
  ``rate``                steps per second (float; 50 for DeepSpeech / wav2vec 2.0 at 16 kHz, 100 for our log-mel)
  ``start`` (optional)    seconds of the first step's start in the media's clock (default 0)
  ``kind`` (optional)     a name (``"deepspeech"``, ``"wav2vec2"`` ...) stored with models trained on them
  ======================  =====================================================================================

Alignment: a window of ``steps`` steps for a frame at time ``t`` starts at step
``s0 = round(x - steps / 2)`` with ``x = (t - start) * rate``, so its centre ``(s0 + steps / 2) / rate`` is within
half a step of ``t`` (5 ms at 100 steps per second) for every frame of any video length (frame times are exact
rationals, never accumulated floats): exactly on ``t`` at 25 fps, 0 / 1.7 / 3.3 ms off at 30 fps, up to 5 ms at 24 fps
and 29.97 fps. Steps before the start or after the end of the audio are padding: digital silence for log-mel, the
edge step for external features.

Speech-likeness (a screen, not a recogniser): per 2-second block with sound, the spread (standard deviation over the
active steps) of the spectral centroid in mel bands and the share of low-energy steps (below half the block's mean
RMS). Speech alternates voiced sounds, fricatives and pauses, so its centroid jumps (median 5.4 bands on the GRID
clips, 5th percentile 3.9); music, tones and noise hold their spectrum (music tracks of ``data/video``: median 2.7,
95th percentile 3.8; noise and tones below 1.5). A block votes "speech" when the spread is >= 3.5 bands and at least
10 % of its steps are low-energy; the audio is speech-like when half of its voting blocks do. A loudness envelope at
syllable rates was tried first and does not separate: music beats sit at 2-8 Hz too (``docs/neural_voice_puppetry.md``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import AudioError
from .decode import AudioInfo, resample, stream_audio, to_mono
from .mel import MelConfig, MelStream

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Steps of the per-frame window (the paper's 16).
WINDOW_STEPS = 16
#: Below this peak level (dBFS) the whole audio counts as silent.
SILENCE_DBFS = -60.0
#: A step is active when its level exceeds max(ACTIVE_DBFS, the noise floor + ACTIVE_ABOVE_FLOOR_DB).
ACTIVE_DBFS = -50.0
ACTIVE_ABOVE_FLOOR_DB = 12.0
#: Speech-likeness block length (s) and thresholds (set on the sample data, see the module docstring).
BLOCK_SECONDS = 2.0
CENTROID_SPREAD_MIN = 3.5
LOW_ENERGY_MIN = 0.1


@dataclass
class AudioFeatures:
    """Feature steps of one audio track and what is known about it.

    Attributes:
        features: ``(T, D)`` float32; step ``s`` covers ``[start + s / rate, start + (s + 1) / rate)`` seconds.
        rate: steps per second. start: seconds of step 0's start. kind: ``"log_mel"`` or the external name.
        pad_value: the value of steps outside the audio (a float; None: repeat the edge step).
        duration: seconds of audio. info: the source's :class:`~facerender.audio.AudioInfo` (None for arrays).
        level_db: ``(T,)`` RMS level per step in dBFS (None for external features).
        active: ``(T,)`` bool, steps above the activity threshold (None for external features).
        silent: no step reaches -60 dBFS. speech_like: the activity looks like speech (see the module docstring).
        speech_fraction: share of the 2-second blocks with sound that look like speech.
        band_limited: the source rate is below 16 kHz, so the top mel bands are empty (telephone audio).
        config: the :class:`~facerender.audio.MelConfig` (log-mel only).
    """

    features: np.ndarray
    rate: float
    start: float = 0.0
    kind: str = "log_mel"
    pad_value: Optional[float] = None
    duration: float = 0.0
    info: Optional[AudioInfo] = None
    level_db: Optional[np.ndarray] = None
    active: Optional[np.ndarray] = None
    silent: bool = False
    speech_like: bool = True
    speech_fraction: float = 1.0
    band_limited: bool = False
    config: Optional[MelConfig] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def windows(self, times, steps: int = WINDOW_STEPS) -> np.ndarray:
        """``(N, steps, D)`` windows centred on the frame times ``(N,)`` seconds (:func:`frame_windows`)."""
        return frame_windows(self.features, times, self.rate, steps, self.pad_value, self.start)

    def frame_activity(self, times, steps: int = WINDOW_STEPS) -> np.ndarray:
        """``(N,)`` share of active steps in each frame's window (0 for silent frames; ones for external features)."""
        times = np.asarray(times, dtype=np.float64)
        if self.active is None:
            return np.ones(times.shape[0])
        a = frame_windows(self.active[:, None].astype(np.float32), times, self.rate, steps, 0.0, self.start)
        return a[:, :, 0].mean(axis=1)

    def summary(self) -> Dict[str, Any]:
        """The flags and sizes as plain JSON values."""
        return {"kind": self.kind, "steps": self.num_steps, "dim": self.dim, "rate": self.rate,
                "duration_s": round(self.duration, 4), "silent": self.silent, "speech_like": self.speech_like,
                "speech_fraction": round(self.speech_fraction, 3), "band_limited": self.band_limited,
                "source_rate": self.info.sample_rate if self.info else None,
                "source_channels": self.info.channels if self.info else None}

    def check_speech(self, what: str = "the audio") -> None:
        """Raise :class:`~facerender.errors.AudioError` when the audio is silent; log a warning when it does not look
        like speech (callers that must refuse non-speech check ``speech_like`` themselves)."""
        if self.silent:
            raise AudioError(f"{what} is silent (peak level below {SILENCE_DBFS:.0f} dBFS over "
                             f"{self.duration:.2f} s): there is no speech to drive a face")
        if not self.speech_like:
            log.warning("%s does not look like speech (%.0f %% of its 2-s blocks); music or noise drive the mouth "
                        "poorly", what, 100 * self.speech_fraction)


# ---------------------------------------------------------------------------------------------------- alignment
def _rate_fraction(fps) -> Fraction:
    from ..io.video import _frame_rate

    return _frame_rate(fps)


def frame_times(num_frames: int, fps) -> np.ndarray:
    """``(N,)`` float64 times ``i / fps`` of frames ``0 .. N-1``, computed exactly (29.97 means 30000/1001)."""
    n = int(num_frames)
    if n < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    r = _rate_fraction(fps)
    return np.arange(n, dtype=np.float64) * float(r.denominator) / float(r.numerator)


def window_starts(times, rate: float, steps: int = WINDOW_STEPS, start: float = 0.0) -> np.ndarray:
    """``(N,)`` int64 first step of each frame's window: ``floor((t - start) * rate - steps / 2 + 0.5)``."""
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"times must be (N,) seconds, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("times hold NaN or inf")
    if not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return np.floor((t - start) * rate - steps / 2.0 + 0.5 + 1e-9).astype(np.int64)


def frame_windows(features, times, rate: float, steps: int = WINDOW_STEPS, pad_value: Optional[float] = None,
                  start: float = 0.0):
    """Per frame the window of ``steps`` feature steps centred on its time.

    Args:
        features: ``(T, D)`` or ``(B, T, D)`` numpy array or torch tensor (step ``s`` covers
            ``[start + s / rate, start + (s + 1) / rate)``).
        times: ``(N,)`` frame times in seconds (:func:`frame_times`, or a track's container timestamps).
        rate: steps per second. steps: window length. start: seconds of step 0's start.
        pad_value: value of steps outside ``[0, T)``; None repeats the edge step.

    Returns:
        ``(N, steps, D)`` or ``(B, N, steps, D)``, numpy or torch like ``features`` (same dtype and device).
    """
    is_np = not isinstance(features, torch.Tensor)
    f = torch.as_tensor(np.asarray(features)) if is_np else features
    if f.ndim not in (2, 3):
        raise ValueError(f"features must be (T, D) or (B, T, D), got shape {tuple(f.shape)}")
    T = f.shape[-2]
    s0 = torch.as_tensor(window_starts(times, rate, steps, start), device=f.device)
    idx = s0[:, None] + torch.arange(steps, device=f.device)[None, :]  # (N, steps)
    if T == 0:
        if pad_value is None:
            raise ValueError("cannot take windows of an empty feature sequence without a pad_value")
        shape = f.shape[:-2] + idx.shape + f.shape[-1:]
        out = torch.full(shape, float(pad_value), dtype=f.dtype, device=f.device)
    else:
        out = f[..., idx.clamp(0, T - 1), :]
        if pad_value is not None:
            outside = ((idx < 0) | (idx >= T))[..., None]
            out = torch.where(outside, torch.as_tensor(pad_value, dtype=f.dtype, device=f.device), out)
    return out.numpy() if is_np else out


# ---------------------------------------------------------------------------------------------- speech screen
def _levels(x: np.ndarray, hop: int) -> np.ndarray:
    """RMS level per hop interval in dBFS (the last interval zero-padded)."""
    n = x.shape[0]
    T = -(-n // hop)
    if T == 0:
        return np.zeros(0)
    y = np.zeros(T * hop, np.float64)
    y[:n] = x
    ms = (y.reshape(T, hop) ** 2).mean(axis=1)
    return 10.0 * np.log10(np.maximum(ms, 1e-12))


def speech_screen(level_db: np.ndarray, mel: np.ndarray, rate: float,
                  floor_value: float = -4.0) -> Tuple[np.ndarray, bool, bool, float, Dict[str, Any]]:
    """Activity and speech-likeness from per-step levels and log-mel steps (see the module docstring).

    Args:
        level_db: ``(T,)`` RMS level per step (dBFS). mel: ``(T, M)`` log-mel steps (the package's normalisation).
        rate: steps per second. floor_value: the mel value of silence.

    Returns:
        ``(active (T,) bool, silent, speech_like, speech_fraction, details)``.
    """
    lv = np.asarray(level_db, dtype=np.float64)
    mel = np.asarray(mel, dtype=np.float64)
    T = lv.shape[0]
    if mel.shape[0] != T:
        raise ValueError(f"level_db has {T} steps but mel has {mel.shape[0]}")
    if T == 0 or lv.max() < SILENCE_DBFS:
        return np.zeros(T, bool), True, False, 0.0, {"blocks": 0}
    floor = np.percentile(lv, 10)
    active = lv > max(ACTIVE_DBFS, floor + ACTIVE_ABOVE_FLOOR_DB)
    w = np.maximum(mel - floor_value, 0.0)
    centroid = (w * np.arange(mel.shape[1])).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-9)
    blen = max(8, int(round(BLOCK_SECONDS * rate)))
    amp = 10.0 ** (lv / 20.0)
    votes, spreads, lows = [], [], []
    for b0 in range(0, max(T - blen // 2, 1), blen):
        act = active[b0:b0 + blen]
        if act.shape[0] < blen // 2 or act.sum() < max(5, 0.1 * act.shape[0]):
            continue  # too short, or a pause: no vote
        blk = amp[b0:b0 + blen]
        spread = float(centroid[b0:b0 + blen][act].std())
        low = float((blk < 0.5 * blk.mean()).mean())
        spreads.append(spread)
        lows.append(low)
        votes.append(spread >= CENTROID_SPREAD_MIN and low >= LOW_ENERGY_MIN)
    frac = float(np.mean(votes)) if votes else 0.0
    details = {"blocks": len(votes), "centroid_spread": float(np.median(spreads)) if spreads else 0.0,
               "low_energy": float(np.median(lows)) if lows else 0.0}
    return active, False, bool(votes) and frac >= 0.5, frac, details


# ------------------------------------------------------------------------------------------------ computation
def iter_log_mel(source, config: MelConfig = MelConfig(), chunk_seconds: float = 30.0,
                 info_out: Optional[list] = None, level_out: Optional[list] = None) -> Iterator[np.ndarray]:
    """Stream a media file's log-mel steps: yields ``(t, n_mels)`` float32 blocks (memory flat in the length).

    Args:
        source: a file path. config: :class:`MelConfig`. chunk_seconds: decoded audio per block.
        info_out: receives the :class:`AudioInfo`. level_out: receives ``(t,)`` per-step levels (dBFS) per block.
    """
    ms = MelStream(config)
    hop = config.hop_length
    rest = np.zeros(0, np.float32)
    for chunk in stream_audio(source, config.sample_rate, chunk_seconds, info_out):
        if level_out is not None:
            allx = np.concatenate([rest, chunk])
            k = allx.shape[0] // hop * hop
            level_out.append(_levels(allx[:k], hop))
            rest = allx[k:]
        yield ms.push(chunk).numpy()
    if level_out is not None and rest.size:
        level_out.append(_levels(rest, hop))
    yield ms.finish().numpy()


def compute_features(source, config: MelConfig = MelConfig(), *, sample_rate: Optional[int] = None,
                     chunk_seconds: float = 30.0) -> AudioFeatures:
    """Log-mel features of a media file (streamed) or of samples in memory, with activity and speech flags.

    Args:
        source: a path (any audio or video file with sound), or samples ``(N,)`` / ``(C, N)`` (numpy or torch; C = 1,
            2 or 6 channels) with ``sample_rate``.
        config: :class:`MelConfig` (16 kHz, 80 mel bands, 25 ms / 10 ms).
        sample_rate: Hz of ``source`` when it is an array (8 to 192 kHz; resampled to ``config.sample_rate``).
        chunk_seconds: decoding block for files.

    Returns:
        :class:`AudioFeatures` (``features (T, 80)`` float32, ``T = ceil(duration * 100)``).

    Raises:
        FileNotFoundError, AudioError (no audio stream, bad rate, NaN samples), VideoError (unreadable file).
        Silent audio and non-speech are FLAGGED (``silent``, ``speech_like``), not raised: see
        :meth:`AudioFeatures.check_speech`.
    """
    info = None
    if isinstance(source, (str, os.PathLike)):
        infos: list = []
        levels: list = []
        blocks = list(iter_log_mel(source, config, chunk_seconds, infos, levels))
        info = infos[0] if infos else None
        feats = np.concatenate(blocks) if blocks else np.zeros((0, config.n_mels), np.float32)
        level_db = np.concatenate(levels) if levels else np.zeros(0)
        src_rate = info.sample_rate if info else config.sample_rate
    else:
        if sample_rate is None:
            raise ValueError("sample_rate is required when source is an array of samples")
        x = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else np.asarray(source)
        if x.ndim not in (1, 2):
            raise ValueError(f"samples must be (N,) or (C, N), got shape {x.shape}")
        x = to_mono(x.astype(np.float32))
        if not np.all(np.isfinite(x)):
            raise AudioError("audio samples hold NaN or inf")
        x = resample(x, int(sample_rate), config.sample_rate)
        from .mel import log_mel

        feats = log_mel(torch.from_numpy(x), config).numpy()
        level_db = _levels(x, config.hop_length)
        src_rate = int(sample_rate)
    n = min(feats.shape[0], level_db.shape[0])
    if level_db.shape[0] != feats.shape[0]:
        level_db = np.concatenate([level_db[:n], np.full(feats.shape[0] - n, -120.0)])
    active, silent, speech_like, frac, details = speech_screen(level_db, feats, config.steps_per_second, config.floor)
    return AudioFeatures(features=np.ascontiguousarray(feats, dtype=np.float32), rate=config.steps_per_second,
                         kind="log_mel", pad_value=config.floor, duration=feats.shape[0] / config.steps_per_second,
                         info=info, level_db=level_db.astype(np.float32), active=active, silent=silent,
                         speech_like=speech_like, speech_fraction=frac, band_limited=src_rate < 2 * config.fmax,
                         config=config, extra={"speech_screen": details})


# ----------------------------------------------------------------------------------------------- file format
def save_features(path: PathLike, features: Union[AudioFeatures, np.ndarray], rate: Optional[float] = None,
                  kind: Optional[str] = None, start: float = 0.0) -> Path:
    """Write features in the documented ``.npz`` format (atomically). ``features``: an :class:`AudioFeatures` or a
    ``(T, D)`` array with ``rate``."""
    from ..io.atomic import atomic_write

    if isinstance(features, AudioFeatures):
        arr, rate, kind, start = features.features, features.rate, features.kind, features.start
    else:
        arr = np.asarray(features)
    _check_external(arr, rate, str(path))
    path = Path(path)
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, features=np.asarray(arr, np.float32), rate=np.float64(rate), start=np.float64(start),
                     kind=np.str_(kind or "external"))
    return path


def _check_external(arr: np.ndarray, rate, where: str) -> None:
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise AudioError(f"{where}: features must be a non-empty (T, D) array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise AudioError(f"{where}: features must be finite numbers (dtype {arr.dtype})")
    if rate is None or not np.isfinite(rate) or not float(rate) > 0:
        raise AudioError(f"{where}: rate (steps per second) must be a positive number, got {rate!r}")


def load_features(path: PathLike) -> AudioFeatures:
    """Read a features ``.npz`` (see the module docstring for the keys).

    Raises:
        FileNotFoundError; AudioError naming the file and the missing / bad key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"features file not found: {str(path)!r}")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise AudioError(f"{str(path)!r} is not a features .npz file: {e}") from e
    with z:
        if "features" not in z or "rate" not in z:
            raise AudioError(f"{str(path)!r} must hold 'features' (T, D) and 'rate' (steps per second); it holds "
                             f"{sorted(z.files)}")
        arr = np.asarray(z["features"])
        rate = float(z["rate"]) if np.ndim(z["rate"]) == 0 else None
        start = float(z["start"]) if "start" in z else 0.0
        kind = str(z["kind"]) if "kind" in z else "external"
    _check_external(arr, rate, repr(str(path)))
    arr = arr.astype(np.float32)
    return AudioFeatures(features=arr, rate=rate, start=start, kind=kind, pad_value=None,
                         duration=arr.shape[0] / rate)


__all__ = ["AudioFeatures", "WINDOW_STEPS", "compute_features", "iter_log_mel", "frame_times", "frame_windows",
           "window_starts", "speech_screen", "save_features", "load_features"]
