"""Decode speech audio from any media file, streamed, as 16 kHz mono float32 (PyAV; imported on first use).

* :func:`probe_audio`: what the file's first audio stream is (rate, channels, layout, duration) without decoding.
* :func:`stream_audio`: a generator of mono float32 chunks at the target rate. The file is decoded packet by packet
  and resampled / downmixed by FFmpeg's libswresample (a stateful, streaming resampler: chunk boundaries leave no
  seams), so memory does not grow with the audio's length. The AAC encoder's end padding is cut at the stream's
  declared duration, as :func:`facerender.io.read_audio` does.
* :func:`load_audio`: the whole signal as one array (for short files).
* :func:`resample` / :func:`to_mono`: the same for arrays already in memory (``scipy.signal.resample_poly``, the ITU
  downmix), for callers that hold samples rather than a file.

Mono downmix (:func:`to_mono`, for files and arrays alike): stereo is the mean of the two channels; 5.1 weighs the
centre and surround channels -3 dB against the front pair and drops the LFE, normalised so that the same signal in
every channel keeps its level; other layouts: the mean.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import numpy as np

from ..errors import AudioError
from ..io.video import _ffmpeg_errors, _import_av, _open_for_reading

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: The sample rate of every speech feature in the package.
SPEECH_RATE = 16000
#: Accepted source sample rates (Hz): telephone band up to studio rates.
MIN_RATE, MAX_RATE = 8000, 192000


@dataclass(frozen=True)
class AudioInfo:
    """The first audio stream of a file: ``sample_rate`` Hz, ``channels``, ``layout`` (FFmpeg's name, e.g. ``mono``,
    ``stereo``, ``5.1``), ``duration`` seconds (0 when the container does not say), ``codec``."""

    path: str
    sample_rate: int
    channels: int
    layout: str
    duration: float
    codec: str


def _check_rate(rate: int, where: str) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"{where}: sample rate {rate} Hz is outside the supported {MIN_RATE}-{MAX_RATE} Hz")


def _stream_info(path: Path, container) -> Tuple[object, AudioInfo]:
    if not container.streams.audio:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise AudioError(f"{str(path)!r} holds no audio stream (streams: {', '.join(kinds)}); speech-driven methods "
                         f"need the driving speech as audio (a .wav / .mp3 / video file with sound)")
    s = container.streams.audio[0]
    rate = int(s.rate or 0)
    if rate <= 0:
        raise AudioError(f"{str(path)!r}: the audio stream has no sample rate (corrupt header?)")
    if s.duration is not None and s.time_base is not None:
        duration = float(s.duration * s.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    else:
        duration = 0.0
    layout = s.layout.name if s.layout is not None else f"{s.channels}c"
    info = AudioInfo(str(path), rate, int(s.channels), layout, duration, s.codec_context.name)
    return s, info


def probe_audio(path: PathLike) -> AudioInfo:
    """Describe the first audio stream of ``path`` (nothing is decoded).

    Raises:
        FileNotFoundError: no such file.
        AudioError: no audio stream, or an unusable sample rate (a :class:`~facerender.errors.VideoError`).
        VideoError: unreadable file.
    """
    path = Path(path)
    container = _open_for_reading(path)
    try:
        _, info = _stream_info(path, container)
    finally:
        container.close()
    return info


def stream_audio(path: PathLike, sample_rate: int = SPEECH_RATE, chunk_seconds: float = 10.0,
                 info_out: Optional[list] = None) -> Iterator[np.ndarray]:
    """Decode the first audio stream of ``path`` as mono float32 chunks at ``sample_rate``.

    Args:
        path: any file FFmpeg reads (wav, mp3, flac, m4a, mp4, mkv ...).
        sample_rate: output rate in Hz (default 16 kHz).
        chunk_seconds: length of the yielded chunks (the last one is shorter).
        info_out: if a list is given, the file's :class:`AudioInfo` is appended to it before the first chunk.

    Yields:
        ``(n,)`` float32 arrays, nominally in ``[-1, 1]``; their concatenation is the whole signal (cut at the
        stream's declared duration: AAC's end padding is dropped).

    Raises:
        FileNotFoundError, AudioError (no audio stream, source rate outside 8-192 kHz), VideoError (unreadable or
        corrupt file; raised when the corruption is reached).
    """
    av = _import_av()
    if int(sample_rate) <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not chunk_seconds > 0:
        raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds}")
    path = Path(path)
    container = _open_for_reading(path)
    try:
        stream, info = _stream_info(path, container)
        _check_rate(info.sample_rate, repr(str(path)))
        if info_out is not None:
            info_out.append(info)
        limit = None
        if stream.duration is not None and stream.time_base is not None:
            limit = int(round(Fraction(stream.duration) * stream.time_base * int(sample_rate)))
            limit = limit if limit > 0 else None
        # resample every channel, then downmix with to_mono: the same gains as for arrays in memory (FFmpeg's own
        # mono downmix sums the two channels of stereo at -3 dB each, 3 dB louder than mono)
        resampler = av.AudioResampler(format="fltp", layout=info.layout if info.channels <= 8 else None,
                                      rate=int(sample_rate))
        chunk = max(1, int(round(chunk_seconds * sample_rate)))
        buf, held, done = [], 0, 0

        def drain(final: bool):
            nonlocal buf, held, done
            while held >= chunk or (final and held > 0):
                allx = np.concatenate(buf) if len(buf) > 1 else buf[0]
                n = min(chunk, allx.shape[0])
                out, rest = allx[:n], allx[n:]
                buf, held = ([rest] if rest.size else []), rest.shape[0]
                if limit is not None:
                    n = min(n, limit - done)
                    out = out[:max(n, 0)]
                done += out.shape[0]
                if out.size:
                    yield np.ascontiguousarray(out, dtype=np.float32)
                if limit is not None and done >= limit:
                    buf, held = [], 0
                    return

        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    a = to_mono(out.to_ndarray())
                    buf.append(a)
                    held += a.shape[0]
                yield from drain(False)
                if limit is not None and done >= limit:
                    return
            for out in resampler.resample(None):
                a = to_mono(out.to_ndarray())
                buf.append(a)
                held += a.shape[0]
        except _ffmpeg_errors(av) as e:
            from ..errors import VideoError

            raise VideoError(f"error decoding the audio of {str(path)!r} after {done / sample_rate:.2f} s: {e}") from e
        yield from drain(True)
    finally:
        container.close()


def load_audio(path: PathLike, sample_rate: int = SPEECH_RATE) -> Tuple[np.ndarray, AudioInfo]:
    """The whole first audio stream of ``path`` as ``(N,)`` float32 mono at ``sample_rate``, and its
    :class:`AudioInfo`. For long files prefer :func:`stream_audio` (or :func:`~facerender.audio.log_mel_file`)."""
    info: list = []
    chunks = list(stream_audio(path, sample_rate, info_out=info))
    x = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return x, info[0]


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Downmix ``(C, N)`` (or ``(N,)``) samples to ``(N,)`` float32.

    1 channel: unchanged; 2: the mean; 6 (5.1, FFmpeg order FL FR FC LFE BL BR): ``(FL + FR + 0.707 (FC + BL + BR))``
    divided by ``2 + 3 * 0.707`` with the LFE dropped; other counts: the mean of all channels.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        return x
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"samples must be (N,) or (C, N), got shape {x.shape}")
    c = x.shape[0]
    if c == 1:
        return x[0].copy()
    if c == 6:
        g = math.sqrt(0.5)
        w = np.array([1.0, 1.0, g, 0.0, g, g], np.float32)
        return (w @ x) / w.sum()
    return x.mean(axis=0)


def resample(samples: np.ndarray, rate: int, target: int = SPEECH_RATE) -> np.ndarray:
    """Resample ``(N,)`` or ``(C, N)`` float samples from ``rate`` to ``target`` Hz (polyphase FIR with a Kaiser
    window, ``scipy.signal.resample_poly``; the output has ``ceil(N * target / rate)`` samples).

    Raises:
        AudioError: ``rate`` outside 8-192 kHz, or non-finite samples.
    """
    rate, target = int(rate), int(target)
    _check_rate(rate, "resample(rate=...)")
    if target <= 0:
        raise ValueError(f"target rate must be positive, got {target}")
    x = np.asarray(samples, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise AudioError("audio samples hold NaN or inf")
    if rate == target:
        return x.copy()
    from scipy.signal import resample_poly  # imported here: scipy.signal takes seconds to import

    g = math.gcd(rate, target)
    return resample_poly(x, target // g, rate // g, axis=-1).astype(np.float32)


__all__ = ["AudioInfo", "SPEECH_RATE", "probe_audio", "stream_audio", "load_audio", "to_mono", "resample"]
