"""Log-mel spectrogram in torch (CPU and CUDA, batched, differentiable), one-shot or streamed.

The amplitude pipeline is Wav2Lip's ``audio.melspectrogram`` (SadTalker ships the same ``audio.py`` and
hyper-parameters): pre-emphasis ``y[n] = x[n] - 0.97 x[n-1]``; magnitude STFT (power 1) with a periodic Hann window;
an 80-band Slaney mel filterbank (librosa's default: Slaney's mel scale, area-normalised triangles) from 55 to 7600 Hz;
``20 log10(max(1e-5, mel)) - 20`` dB (``min_level_db`` -100, ``ref_level_db`` 20); then the symmetric
normalisation ``clip(8 (S + 100) / 100 - 4, -4, 4)``: features lie in ``[-4, 4]`` and digital silence is ``-4``.

Window and hop: :class:`MelConfig` defaults to 25 ms / 10 ms at 16 kHz (400 / 160 samples, ``n_fft`` 400, 100 steps
per second), the speech-recognition framing that the Neural Voice Puppetry issue asks for; Wav2Lip and SadTalker
themselves use 50 ms / 12.5 ms (``n_fft`` 800, 80 steps per second): :meth:`MelConfig.wav2lip` gives exactly theirs.

Time grid: step ``s`` describes the hop interval ``[s * hop, (s + 1) * hop)`` samples and its window is centred on
that interval's middle, ``(s + 0.5) * hop`` (librosa centres step ``s`` on sample ``s * hop`` instead: the same
frames shifted by half a hop). The signal is zero-padded at both ends (silence before and after the file), and a
signal of ``N`` samples gives ``T = ceil(N / hop)`` steps. With this grid a 16-step window is centred EXACTLY on
each video frame at 25 fps (:func:`facerender.audio.frame_windows`).

:class:`MelStream` computes the same frames from chunks of any length (equal to :func:`log_mel` up to float rounding:
both cut the same frames and call one frame transform), so hour-long audio is processed in constant memory.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Union

import numpy as np
import torch

from ..errors import AudioError


@dataclass(frozen=True)
class MelConfig:
    """Settings of the log-mel features (see the module docstring for the maths).

    Attributes:
        sample_rate: Hz of the input waveform (decoders resample to it).
        n_fft: FFT size; ``win_length``: Hann window length (centred in ``n_fft``); ``hop_length``: samples per step.
        n_mels, fmin, fmax: the mel filterbank (Hz).
        preemphasis: coefficient of ``y[n] = x[n] - k x[n-1]`` (0: off).
        min_level_db, ref_level_db: the dB floor and reference (Wav2Lip's -100 and 20).
        max_abs_value, symmetric: normalisation to ``[-max_abs_value, max_abs_value]`` (symmetric) or
            ``[0, max_abs_value]``, clipped.
    """

    sample_rate: int = 16000
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    fmin: float = 55.0
    fmax: float = 7600.0
    preemphasis: float = 0.97
    min_level_db: float = -100.0
    ref_level_db: float = 20.0
    max_abs_value: float = 4.0
    symmetric: bool = True

    def __post_init__(self):
        if self.sample_rate <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise ValueError(f"sample_rate, hop_length and n_mels must be positive, got {self.sample_rate}, "
                             f"{self.hop_length}, {self.n_mels}")
        if not 0 < self.win_length <= self.n_fft:
            raise ValueError(f"win_length must lie in (0, n_fft={self.n_fft}], got {self.win_length}")
        if self.n_fft % 2 or self.hop_length % 2 or self.win_length % 2:
            raise ValueError(f"n_fft, win_length and hop_length must be even (the half-hop time grid), got "
                             f"{self.n_fft}, {self.win_length}, {self.hop_length}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= sample_rate / 2 = {self.sample_rate / 2}, got fmin "
                             f"{self.fmin}, fmax {self.fmax}")
        if not 0 <= self.preemphasis < 1:
            raise ValueError(f"preemphasis must lie in [0, 1), got {self.preemphasis}")
        if not self.min_level_db < 0 or not self.max_abs_value > 0:
            raise ValueError(f"min_level_db must be negative and max_abs_value positive, got {self.min_level_db}, "
                             f"{self.max_abs_value}")

    @classmethod
    def wav2lip(cls) -> "MelConfig":
        """Wav2Lip's / SadTalker's exact settings: 50 ms window, 12.5 ms hop (``n_fft`` 800, hop 200), 80 Hz steps."""
        return cls(n_fft=800, win_length=800, hop_length=200)

    @property
    def steps_per_second(self) -> float:
        """Feature steps per second (``sample_rate / hop_length``; 100 by default)."""
        return self.sample_rate / self.hop_length

    @property
    def floor(self) -> float:
        """The feature value of digital silence (the lower clip): ``-max_abs_value`` (symmetric) or 0."""
        return -self.max_abs_value if self.symmetric else 0.0

    @property
    def left_pad(self) -> int:
        """Zeros before the first sample so that step ``s`` is centred on sample ``(s + 0.5) * hop``."""
        return self.n_fft // 2 - self.hop_length // 2

    def num_steps(self, num_samples: int) -> int:
        """Steps of a signal of ``num_samples``: ``ceil(num_samples / hop_length)``."""
        return -(-int(num_samples) // self.hop_length)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- filterbank
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (linear below 1 kHz, logarithmic above), float64."""
    f = np.asarray(f, dtype=np.float64)
    lin = f / _F_SP
    return np.where(f >= _MIN_LOG_HZ, _MIN_LOG_MEL + np.log(np.maximum(f, 1e-12) / _MIN_LOG_HZ) / _LOGSTEP, lin)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m)


def mel_filterbank(config: MelConfig = MelConfig(), dtype: torch.dtype = torch.float32,
                   device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """The ``(n_mels, n_fft // 2 + 1)`` Slaney filterbank (triangles between ``n_mels + 2`` points equally spaced on
    Slaney's mel scale from ``fmin`` to ``fmax``, each divided by half its width in Hz: librosa's ``norm='slaney'``).
    """
    n_freq = config.n_fft // 2 + 1
    fft_hz = np.linspace(0.0, config.sample_rate / 2.0, n_freq)
    pts = mel_to_hz(np.linspace(hz_to_mel(config.fmin), hz_to_mel(config.fmax), config.n_mels + 2))
    widths = np.diff(pts)
    ramps = pts[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    fb = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (pts[2:] - pts[:-2]))[:, None]
    return torch.as_tensor(fb, dtype=dtype, device=device)


def _window(config: MelConfig, dtype, device) -> torch.Tensor:
    w = torch.hann_window(config.win_length, periodic=True, dtype=dtype, device=device)
    left = (config.n_fft - config.win_length) // 2
    return torch.nn.functional.pad(w, (left, config.n_fft - config.win_length - left))


def _check_wave(x: torch.Tensor, name: str = "waveform") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (N,) or (B, N), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if x.ndim not in (1, 2):
        raise ValueError(f"{name} must be (N,) or (B, N), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise AudioError(f"{name} holds NaN or inf")
    return x


def preemphasis(x: torch.Tensor, k: float, previous: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``y[n] = x[n] - k x[n-1]`` along the last axis, ``x[-1] = previous`` (0 when None, as scipy's ``lfilter``).

    Args:
        x: ``(..., N)``. previous: ``(...,)`` the sample before ``x[..., 0]`` (streaming).
    """
    if k == 0:
        return x
    prev = torch.zeros_like(x[..., :1]) if previous is None else previous.unsqueeze(-1).to(x)
    return x - k * torch.cat([prev, x[..., :-1]], dim=-1)


def frames_to_log_mel(frames: torch.Tensor, config: MelConfig, fb: Optional[torch.Tensor] = None,
                      window: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Windowed FFT magnitude -> mel -> normalised dB of ready-cut frames ``(..., T, n_fft)`` -> ``(..., T, n_mels)``.

    The one frame transform behind :func:`log_mel` and :class:`MelStream`.
    """
    if window is None:
        window = _window(config, frames.dtype, frames.device)
    if fb is None:
        fb = mel_filterbank(config, frames.dtype, frames.device)
    mag = torch.fft.rfft(frames * window, dim=-1).abs()
    mel = mag @ fb.transpose(0, 1)
    min_level = 10.0 ** (config.min_level_db / 20.0)
    db = 20.0 * torch.log10(torch.clamp(mel, min=min_level)) - config.ref_level_db
    unit = (db - config.min_level_db) / (-config.min_level_db)
    if config.symmetric:
        return torch.clamp(2.0 * config.max_abs_value * unit - config.max_abs_value, -config.max_abs_value,
                           config.max_abs_value)
    return torch.clamp(config.max_abs_value * unit, 0.0, config.max_abs_value)


def log_mel(waveform: torch.Tensor, config: MelConfig = MelConfig()) -> torch.Tensor:
    """Normalised log-mel features of a waveform at ``config.sample_rate``.

    Args:
        waveform: ``(N,)`` or ``(B, N)`` float tensor (any device; float32 or float64), nominally in ``[-1, 1]``.
        config: :class:`MelConfig`.

    Returns:
        ``(T, n_mels)`` or ``(B, T, n_mels)`` with ``T = ceil(N / hop_length)``; step ``s`` is centred on sample
        ``(s + 0.5) * hop_length``. Same device and dtype as the input; differentiable (the clip to
        ``[-max_abs_value, max_abs_value]`` has zero gradient where it is active).

    Raises:
        TypeError / ValueError: not a float tensor of rank 1 or 2. AudioError: NaN or inf samples.
    """
    x = _check_wave(waveform)
    single = x.ndim == 1
    if single:
        x = x.unsqueeze(0)
    n = x.shape[-1]
    T = config.num_steps(n)
    if T == 0:
        out = x.new_zeros((x.shape[0], 0, config.n_mels))
        return out[0] if single else out
    y = preemphasis(x, config.preemphasis)
    left = config.left_pad
    right = (T - 1) * config.hop_length + config.n_fft - left - n
    y = torch.nn.functional.pad(y, (left, right))
    frames = y.unfold(-1, config.n_fft, config.hop_length)
    out = frames_to_log_mel(frames, config)
    return out[0] if single else out


class LogMel(torch.nn.Module):
    """Module form of :func:`log_mel` (holds the config, the filterbank and the window as buffers)."""

    def __init__(self, config: MelConfig = MelConfig()):
        super().__init__()
        self.config = config
        self.register_buffer("fb", mel_filterbank(config), persistent=False)
        self.register_buffer("window", _window(config, torch.float32, None), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(N,)`` / ``(B, N)`` -> ``(T, n_mels)`` / ``(B, T, n_mels)``; see :func:`log_mel`."""
        x = _check_wave(waveform)
        single = x.ndim == 1
        if single:
            x = x.unsqueeze(0)
        c = self.config
        T = c.num_steps(x.shape[-1])
        y = torch.nn.functional.pad(preemphasis(x, c.preemphasis),
                                    (c.left_pad, (T - 1) * c.hop_length + c.n_fft - c.left_pad - x.shape[-1]))
        out = frames_to_log_mel(y.unfold(-1, c.n_fft, c.hop_length), c, self.fb.to(x), self.window.to(x))
        return out[0] if single else out


class MelStream:
    """Streaming :func:`log_mel`: push chunks of a mono waveform, get the finished steps; :meth:`finish` at the end.

    The concatenation of everything returned equals ``log_mel(concatenation of the chunks)`` (the same frames
    through the same transform), whatever the chunk sizes. Memory: one window plus the current chunk.

    Example:
        >>> ms = MelStream(MelConfig())
        >>> parts = [ms.push(chunk) for chunk in stream_audio("talk.mp4")] + [ms.finish()]
        >>> feats = torch.cat(parts)          # (T, 80)
    """

    def __init__(self, config: MelConfig = MelConfig(), device: Union[str, torch.device, None] = None,
                 dtype: torch.dtype = torch.float32):
        self.config = config
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self._fb = mel_filterbank(config, dtype, self.device)
        self._window = _window(config, dtype, self.device)
        self._buf = torch.zeros(config.left_pad, dtype=dtype, device=self.device)  # padded, pre-emphasised
        self._prev = torch.zeros((), dtype=dtype, device=self.device)
        self.samples_in = 0
        self.steps_out = 0
        self._finished = False

    def _emit(self, count: int) -> torch.Tensor:
        c = self.config
        if count <= 0:
            return torch.zeros((0, c.n_mels), dtype=self.dtype, device=self.device)
        need = (count - 1) * c.hop_length + c.n_fft
        frames = self._buf[:need].unfold(0, c.n_fft, c.hop_length)
        out = frames_to_log_mel(frames, c, self._fb, self._window)
        self._buf = self._buf[count * c.hop_length:]
        self.steps_out += count
        return out

    def push(self, chunk) -> torch.Tensor:
        """Add ``(n,)`` samples (numpy or torch); returns the steps completed so far ``(t, n_mels)``."""
        if self._finished:
            raise RuntimeError("MelStream.push() after finish()")
        x = torch.as_tensor(np.asarray(chunk, dtype=np.float32) if not isinstance(chunk, torch.Tensor) else chunk)
        x = x.to(device=self.device, dtype=self.dtype).reshape(-1)
        if x.numel() == 0:
            return self._emit(0)
        if not torch.isfinite(x).all():
            raise AudioError(f"audio chunk at sample {self.samples_in} holds NaN or inf")
        y = preemphasis(x, self.config.preemphasis, self._prev)
        self._prev = x[-1]
        self._buf = torch.cat([self._buf, y])
        self.samples_in += x.numel()
        c = self.config
        ready = (self._buf.numel() - c.n_fft) // c.hop_length + 1 if self._buf.numel() >= c.n_fft else 0
        # never emit past the final step count of what has been seen so far
        ready = min(ready, c.num_steps(self.samples_in) - self.steps_out)
        return self._emit(ready)

    def finish(self) -> torch.Tensor:
        """Zero-pad the end and return the remaining steps (total ``ceil(samples / hop)``)."""
        if self._finished:
            raise RuntimeError("MelStream.finish() called twice")
        self._finished = True
        c = self.config
        remaining = c.num_steps(self.samples_in) - self.steps_out
        need = (remaining - 1) * c.hop_length + c.n_fft if remaining > 0 else 0
        if self._buf.numel() < need:
            self._buf = torch.nn.functional.pad(self._buf, (0, need - self._buf.numel()))
        return self._emit(remaining)


__all__ = ["MelConfig", "LogMel", "MelStream", "log_mel", "mel_filterbank", "frames_to_log_mel", "preemphasis",
           "hz_to_mel", "mel_to_hz"]
