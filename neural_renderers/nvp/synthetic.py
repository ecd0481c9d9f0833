"""A synthetic audio -> expression task whose answer is known: loudness drives jawOpen.

:func:`loudness_jaw_clip` makes a voiced, vowel-like signal (a 120 Hz harmonic series through two formant-like
resonances, plus a little noise) whose loudness follows a smooth random envelope between -40 and -6 dBFS, and the
expressions that envelope implies through a known map: ``jawOpen = 0.7 * clip((L_dB(t) + 40) / 34, 0, 1)`` at each
frame time, every other blendshape 0. The map is linear in dB, and log-mel features are dB, so a network that learns
what it is given recovers jawOpen almost exactly; one that does not (wrong alignment, features that ignore level, a
broken loss) does not. Used by the tests and ``benchmarks/bench_nvp_audio.py``.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from facerender.audio import MelConfig, compute_features, frame_times, window_starts

from .data import ClipData

__all__ = ["JAW_FLOOR_DB", "JAW_RANGE_DB", "JAW_MAX", "jaw_from_level", "loudness_jaw_clip", "synthetic_clip"]

JAW_FLOOR_DB, JAW_RANGE_DB, JAW_MAX = -40.0, 34.0, 0.7


def jaw_from_level(level_db: np.ndarray) -> np.ndarray:
    """The known map: ``0.7 * clip((level_db + 40) / 34, 0, 1)``."""
    return JAW_MAX * np.clip((np.asarray(level_db, np.float64) - JAW_FLOOR_DB) / JAW_RANGE_DB, 0.0, 1.0)


def loudness_jaw_clip(seconds: float, seed: int = 0, fps: float = 25.0, sample_rate: int = 16000,
                      num_expressions: int = 53, jaw_index: int = 26) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic clip: ``(waveform (N,) float32 at sample_rate, expression (F, K) float32, level_db (F,))`` with
    ``F = floor(seconds * fps)`` frames; ``expression[:, jaw_index]`` (ICT's jawOpen is 26) is the known map of the
    loudness at each frame's time."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    # smooth loudness envelope in dB: random sinusoids at 0.3 - 4 Hz (syllable-like), scaled to [-40, -6]
    env = np.zeros(n)
    for _ in range(6):
        f = rng.uniform(0.3, 4.0)
        env += rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    env = (env - env.min()) / max(env.max() - env.min(), 1e-9)
    level_db = JAW_FLOOR_DB - 4.0 + (JAW_RANGE_DB + 8.0) * env  # a little beyond both ends of the map
    # vowel-like carrier: harmonics of 120 Hz shaped by resonances at 700 and 1200 Hz, plus noise
    f0 = 120.0 * (1 + 0.03 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    carrier = np.zeros(n)
    for h in range(1, 30):
        fh = 120.0 * h
        if fh > 7000:
            break
        gain = 1.0 / (1 + ((fh - 700) / 150) ** 2) + 0.6 / (1 + ((fh - 1200) / 200) ** 2) + 0.02
        carrier += gain * np.sin(h * phase)
    carrier += 0.05 * rng.standard_normal(n)
    carrier /= np.sqrt(np.mean(carrier ** 2))
    wave = carrier * 10.0 ** (level_db / 20.0)
    times = frame_times(int(np.floor(seconds * fps)), fps)
    frame_level = np.interp(times, t, level_db)
    expr = np.zeros((times.shape[0], num_expressions), np.float32)
    expr[:, jaw_index] = jaw_from_level(frame_level)
    return wave.astype(np.float32), expr, frame_level


def synthetic_clip(seconds: float, seed: int = 0, identity: int = 0, fps: float = 25.0,
                   config: MelConfig = MelConfig(), window_steps: int = 16, name: str = "synthetic") -> ClipData:
    """:func:`loudness_jaw_clip` as a :class:`~neural_renderers.nvp.data.ClipData` (features from the waveform)."""
    wave, expr, _ = loudness_jaw_clip(seconds, seed, fps, config.sample_rate, jaw_index=26)
    feats = compute_features(wave, config, sample_rate=config.sample_rate)
    times = frame_times(expr.shape[0], fps)
    return ClipData(name=f"{name}{seed}", speaker="synthetic", identity=identity, features=feats.features,
                    starts=window_starts(times, feats.rate, window_steps), expression=expr,
                    valid=np.ones(expr.shape[0], bool), pad_value=feats.pad_value, window_steps=window_steps)
