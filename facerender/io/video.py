"""Video and audio with PyAV (optional extra ``video``; imported on first use).

* :class:`VideoReader`: a STREAMING reader. Iterating it decodes one frame at a time and yields
  :class:`Frame` ``(image (H, W, 3) uint8 RGB, time in seconds, index)``; nothing is kept, so memory does not
  grow with the video's length. Timestamps come from the container, so variable-frame-rate videos are read with
  their true times (``fps`` is then the AVERAGE rate).
* :func:`read_audio`: the whole audio track as ``(C, N)`` float32 samples and its sample rate.
* :class:`VideoWriter`: H.264 (libx264, yuv420p) + AAC into a temporary file beside the target, renamed onto it
  when :meth:`VideoWriter.close` succeeds and deleted on an exception: no half-written video is ever left.

yuv420p stores colour at half resolution, so widths and heights must be even: odd sizes are padded by
repeating the last column / row (``odd_size="pad"``, the default: no pixel is lost and pixel coordinates are
unchanged; the file is one pixel wider / taller) or cropped by one column / row (``odd_size="crop"``).

Sizes are ``(H, W)`` throughout, as elsewhere in the package.
"""
from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import BackendUnavailableError, VideoError
from .atomic import atomic_write
from .image import to_uint8_rgb

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Time base of the written video timestamps: 1/90000 s (MPEG's clock) is exact for 24, 25, 30, 60 and 29.97 fps.
VIDEO_TIME_BASE = Fraction(1, 90000)


def _import_av():
    try:
        import av
    except ImportError as e:
        raise BackendUnavailableError(
            f'video and audio IO needs PyAV: pip install "facerender[video]" (import failed: {e})'
        ) from e
    return av


def _ffmpeg_errors(av) -> tuple:
    return (av.error.FFmpegError, EOFError)


def _open_for_reading(path: Path):
    av = _import_av()
    if not path.exists():
        raise FileNotFoundError(f"video file not found: {str(path)!r}")
    if path.is_dir():
        raise VideoError(f"cannot read a video from {str(path)!r}: it is a directory")
    try:
        return av.open(str(path), mode="r")
    except _ffmpeg_errors(av) + (OSError, UnicodeDecodeError, ValueError) as e:
        size = path.stat().st_size
        raise VideoError(f"cannot open video {str(path)!r} ({size} bytes): {e}") from e


class Frame(NamedTuple):
    """One decoded video frame: ``image`` ``(H, W, 3)`` uint8 RGB, ``time`` in seconds, ``index`` from 0."""

    image: np.ndarray
    time: float
    index: int


@dataclass(frozen=True)
class VideoInfo:
    """What a video file says about itself (see :class:`VideoReader` for the meaning of each field)."""

    fps: float
    height: int
    width: int
    frame_count: int
    frame_count_exact: bool
    duration: float
    has_audio: bool
    codec: str
    audio_sample_rate: Optional[int]
    audio_channels: Optional[int]


class VideoReader:
    """Streaming video reader.

    Opening probes the file (and raises :class:`~facerender.errors.VideoError` naming it when it is empty,
    corrupt or holds no video stream); each iteration opens the file anew and decodes frame by frame, so the
    reader can be iterated several times and holds no open file between iterations.

    Example:
        >>> reader = VideoReader("talk.mp4")
        >>> reader.fps, reader.size, reader.frame_count, reader.has_audio
        >>> for image, t, i in reader:      # image (H, W, 3) uint8 RGB, t in seconds
        ...     ...
        >>> first_30 = [f.image for f in itertools.islice(reader, 30)]

    Attributes:
        path: the file.
        fps: average frame rate (the stream's average rate; else frames / duration).
        size: ``(H, W)`` of the decoded frames; also ``height`` and ``width``.
        frame_count: number of frames from the container; an estimate ``round(duration * fps)`` when the container
            does not store it (``frame_count_exact`` is then False).
        duration: seconds (of the video stream, else of the container).
        has_audio: the file holds an audio stream.
        codec: the video codec name.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        container = _open_for_reading(self.path)
        try:
            self.info = self._probe(container)
        finally:
            container.close()

    def _probe(self, container) -> VideoInfo:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoError(f"{str(self.path)!r} holds no video stream (streams: {', '.join(kinds)})")
        vs = container.streams.video[0]
        cc = vs.codec_context
        width, height = int(cc.width or 0), int(cc.height or 0)
        if width <= 0 or height <= 0:
            raise VideoError(f"{str(self.path)!r}: the video stream has no frame size (corrupt header?)")
        if vs.duration is not None and vs.time_base is not None:
            duration = float(vs.duration * vs.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        else:
            duration = 0.0
        rate = vs.average_rate or vs.guessed_rate
        frames = int(vs.frames or 0)
        if rate:
            fps = float(rate)
        elif frames and duration > 0:
            fps = frames / duration
        else:
            fps = 0.0
        exact = frames > 0
        if not exact:
            frames = int(round(duration * fps))
        audio = container.streams.audio[0] if container.streams.audio else None
        return VideoInfo(
            fps=fps, height=height, width=width, frame_count=frames, frame_count_exact=exact, duration=duration,
            has_audio=audio is not None, codec=cc.name,
            audio_sample_rate=int(audio.rate) if audio is not None else None,
            audio_channels=int(audio.channels) if audio is not None else None,
        )

    # Properties mirror ``info`` so that callers write ``reader.fps``.
    fps = property(lambda self: self.info.fps, doc="Average frame rate.")
    height = property(lambda self: self.info.height)
    width = property(lambda self: self.info.width)
    size = property(lambda self: (self.info.height, self.info.width), doc="``(H, W)``.")
    frame_count = property(lambda self: self.info.frame_count, doc="Frames (an estimate if not frame_count_exact).")
    frame_count_exact = property(lambda self: self.info.frame_count_exact)
    duration = property(lambda self: self.info.duration, doc="Seconds.")
    has_audio = property(lambda self: self.info.has_audio)
    codec = property(lambda self: self.info.codec)

    def __iter__(self) -> Iterator[Frame]:
        av = _import_av()
        container = _open_for_reading(self.path)
        index = 0
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fallback_dt = 1.0 / self.fps if self.fps > 0 else 0.0
            try:
                for frame in container.decode(stream):
                    t = frame.time
                    yield Frame(frame.to_ndarray(format="rgb24"), float(t) if t is not None else index * fallback_dt,
                                index)
                    index += 1
            except _ffmpeg_errors(av) as e:
                raise VideoError(f"error decoding {str(self.path)!r} after {index} frames: {e}") from e
        finally:
            container.close()

    def __repr__(self) -> str:
        i = self.info
        return (f"VideoReader({str(self.path)!r}, {i.width}x{i.height}, {i.fps:.3f} fps, "
                f"{i.frame_count}{'' if i.frame_count_exact else ' (estimated)'} frames, {i.duration:.2f} s, "
                f"audio={'yes' if i.has_audio else 'no'})")


def read_audio(path: PathLike) -> Tuple[np.ndarray, int]:
    """Decode the first audio stream of a file.

    Returns:
        ``(samples, sample_rate)``: ``samples`` ``(C, N)`` float32 (nominally in ``[-1, 1]``), ``C`` channels.

    Raises:
        FileNotFoundError: no such file.
        VideoError: unreadable file or no audio stream (the message names the file).
    """
    av = _import_av()
    path = Path(path)
    container = _open_for_reading(path)
    try:
        if not container.streams.audio:
            raise VideoError(f"{str(path)!r} holds no audio stream")
        stream = container.streams.audio[0]
        rate = int(stream.rate)
        # read what is needed after decoding now: PyAV >= 17 refuses stream attributes once the container is closed
        channels = stream.channels
        duration, time_base = stream.duration, stream.time_base
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=rate)
        chunks = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
        except _ffmpeg_errors(av) as e:
            raise VideoError(f"error decoding the audio of {str(path)!r}: {e}") from e
    finally:
        container.close()
    samples = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)
    if duration is not None and time_base is not None:
        # AAC decodes whole 1024-sample frames: drop the encoder's end padding past the stream's duration.
        n = int(round(duration * time_base * rate))
        samples = samples[:, :n] if 0 < n < samples.shape[1] else samples
    return np.ascontiguousarray(samples, dtype=np.float32), rate


_NTSC_RATES = tuple(Fraction(n * 1000, 1001) for n in (24, 30, 48, 60, 120))


def _frame_rate(fps) -> Fraction:
    """``fps`` as a Fraction; 23.976, 29.97, 59.94 ... (within 0.005) mean the NTSC rates ``N * 1000 / 1001``."""
    try:
        rate = fps if isinstance(fps, Fraction) else Fraction(float(fps))
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"fps must be a positive number, got {fps!r}") from None
    if not rate > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    if isinstance(fps, Fraction):
        return rate
    for ntsc in _NTSC_RATES:
        if abs(rate - ntsc) < Fraction(1, 200):
            return ntsc
    return rate.limit_denominator(1000)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


class VideoWriter:
    """H.264 + AAC video writer with an atomic result.

    Use as a context manager (or call :meth:`close`; :meth:`abort` discards):

        >>> with VideoWriter("out.mp4", fps=30, audio_from="input.mp4") as w:
        ...     for image in images:            # (H, W, 3) uint8, float in [0, 1], or a (1, H, W, 3) tensor
        ...         w.write(image)

    Frames go to ``.out.<hex>.partial.mp4`` beside the target; ``close`` finishes the file and renames it onto
    the target, an exception inside the ``with`` block (or :meth:`abort`) deletes it. A writer dropped without
    ``close`` deletes its temporary file when garbage-collected.

    Args:
        path: the output file (``.mp4`` / ``.mov`` / ``.mkv``); its folder must exist.
        fps: frame rate (e.g. 30, 25, 12.5, or a ``Fraction``); 23.976, 29.97 and 59.94 are taken as the NTSC
            rates ``24000/1001``, ``30000/1001``, ``60000/1001``. Frames without an explicit time are at
            ``index / fps``.
        size: ``(H, W)`` of the frames; default: the first frame's.
        audio_from: audio to mux: a media file path (its first audio track), or ``(samples (C, N) or (N,) float,
            sample_rate)``. It is cut to the video's duration (last frame time + 1 / fps).
        crf: x264 constant rate factor (0 = lossless luma, 18 visually lossless, 23 x264's default).
        preset: x264 speed preset (``"ultrafast"`` ... ``"veryslow"``).
        odd_size: ``"pad"`` (repeat the last column / row) or ``"crop"`` for odd widths / heights (yuv420p needs
            even sizes). ``encoded_size`` is the size in the file.
        audio_bitrate: AAC bit rate in bit/s.
    """

    def __init__(self, path: PathLike, fps: float, size: Optional[Tuple[int, int]] = None, *,
                 audio_from: Union[None, PathLike, Tuple[np.ndarray, int]] = None, crf: float = 18,
                 preset: str = "medium", odd_size: str = "pad", audio_bitrate: int = 128_000):
        self._av = _import_av()
        self.path = Path(path)
        rate = _frame_rate(fps)
        if odd_size not in ("pad", "crop"):
            raise ValueError(f"odd_size must be 'pad' or 'crop', got {odd_size!r}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must lie in [0, 51], got {crf}")
        self.fps = rate
        self.crf = crf
        self.preset = preset
        self.odd_size = odd_size
        self.audio_bitrate = int(audio_bitrate)
        self.size: Optional[Tuple[int, int]] = None
        if size is not None:
            self.size = self._check_size(size)
        self._audio, self._audio_rate = self._load_audio(audio_from)
        self._audio_pos = 0
        self._frames = 0
        self._last_pts: Optional[int] = None
        self._container = None
        self._vstream = None
        self._astream = None
        self._closed = False
        # Enter the atomic write now: this checks the folder and picks the temporary name.
        self._atomic = atomic_write(self.path)
        self._tmp = self._atomic.__enter__()
        self._finalizer = weakref.finalize(self, _remove_quietly, self._tmp)

    # -- setup ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _check_size(size) -> Tuple[int, int]:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be (H, W), got {size!r}") from None
        if h < 2 or w < 2:
            raise ValueError(f"size must be at least (2, 2), got {size!r}")
        return h, w

    def _load_audio(self, audio_from):
        if audio_from is None:
            return None, None
        if isinstance(audio_from, (str, os.PathLike)):
            samples, rate = read_audio(audio_from)
        else:
            try:
                samples, rate = audio_from
            except (TypeError, ValueError):
                raise ValueError("audio_from must be a file path or (samples, sample_rate)") from None
            samples = np.asarray(samples.detach().cpu() if hasattr(samples, "detach") else samples, dtype=np.float32)
            if samples.ndim == 1:
                samples = samples[None]
            if samples.ndim != 2 or samples.shape[0] not in (1, 2) or samples.shape[1] == 0:
                raise ValueError(f"audio samples must be (N,) or (C, N) with C = 1 or 2 and N > 0, got shape "
                                 f"{samples.shape}")
            if not np.all(np.isfinite(samples)):
                raise ValueError("audio samples hold NaN or inf")
        rate = int(rate)
        if rate <= 0:
            raise ValueError(f"audio sample rate must be positive, got {rate}")
        if samples.shape[0] not in (1, 2):
            logger.info("audio has %d channels; keeping the first two", samples.shape[0])
            samples = samples[:2]
        return np.ascontiguousarray(samples, dtype=np.float32), rate

    @property
    def encoded_size(self) -> Optional[Tuple[int, int]]:
        """``(H, W)`` in the file (``size`` made even by ``odd_size``), or None before the size is known."""
        if self.size is None:
            return None
        if self.odd_size == "pad":
            return tuple(v + (v % 2) for v in self.size)
        return tuple(v - (v % 2) for v in self.size)

    @property
    def frames_written(self) -> int:
        return self._frames

    def _open(self):
        av = self._av
        eh, ew = self.encoded_size
        try:
            self._container = av.open(str(self._tmp), mode="w")
            vs = self._container.add_stream("libx264", rate=self.fps)
            vs.width, vs.height = ew, eh
            vs.pix_fmt = "yuv420p"
            vs.codec_context.time_base = VIDEO_TIME_BASE
            vs.options = {"crf": f"{self.crf:g}", "preset": self.preset}
            self._vstream = vs
            if self._audio is not None:
                aus = self._container.add_stream("aac", rate=self._audio_rate)
                aus.layout = "mono" if self._audio.shape[0] == 1 else "stereo"
                aus.bit_rate = self.audio_bitrate
                self._astream = aus
        except _ffmpeg_errors(av) + (ValueError,) as e:
            raise VideoError(f"cannot open {str(self.path)!r} for writing (H.264 {ew}x{eh}): {e}") from e

    # -- writing -------------------------------------------------------------------------------------------------

    def _even(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        if h % 2 == 0 and w % 2 == 0:
            return img
        if self.odd_size == "crop":
            return img[: h - h % 2, : w - w % 2]
        return np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")

    def write(self, frames, time: Union[None, float, Sequence[float]] = None) -> None:
        """Append one frame ``(H, W, C)``, a batch ``(B, H, W, C)`` or a list of frames (numpy or torch; see
        :func:`~facerender.io.to_uint8_rgb` for the accepted dtypes).

        Args:
            frames: the frame(s).
            time: presentation time(s) in seconds (one per frame; strictly increasing). Default ``index / fps``.
                Times give variable-frame-rate output; they are rounded to 1/90000 s.

        Raises:
            ValueError: a frame of another size, or times that do not increase.
            VideoError: the writer is closed, or encoding failed.
        """
        if self._closed:
            raise VideoError(f"{str(self.path)!r}: write() after close() or abort()")
        if isinstance(frames, (list, tuple)) or (getattr(frames, "ndim", 0) == 4 and frames.shape[0] != 1):
            batch = frames
        else:
            batch = [frames]
        times = [None] * len(batch) if time is None else np.atleast_1d(np.asarray(time, dtype=np.float64))
        if len(times) != len(batch):
            raise ValueError(f"got {len(batch)} frames but {len(times)} times")
        for frame, t in zip(batch, times):
            self._write_one(frame, t)

    def _write_one(self, frame, t: Optional[float]) -> None:
        av = self._av
        img = to_uint8_rgb(frame)
        if self.size is None:
            self.size = self._check_size(img.shape[:2])
        if img.shape[:2] != self.size:
            raise ValueError(f"{str(self.path)!r}: frame {self._frames} is {img.shape[0]}x{img.shape[1]} (H x W), "
                             f"the video is {self.size[0]}x{self.size[1]}")
        if self._container is None:
            self._open()
        if t is None:
            pts = int(round(self._frames / self.fps / VIDEO_TIME_BASE))
        else:
            if not np.isfinite(t) or t < 0:
                raise ValueError(f"frame time must be a finite non-negative number of seconds, got {t}")
            pts = int(round(Fraction(float(t)) / VIDEO_TIME_BASE))
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"frame times must increase: frame {self._frames} at {float(pts * VIDEO_TIME_BASE):.6f} s "
                             f"follows {float(self._last_pts * VIDEO_TIME_BASE):.6f} s")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(self._even(img)), format="rgb24")
        vf.pts = pts
        vf.time_base = VIDEO_TIME_BASE
        try:
            for packet in self._vstream.encode(vf):
                self._container.mux(packet)
            self._last_pts = pts
            self._frames += 1
            if self._audio is not None:
                self._write_audio_until(self._end_time())
        except _ffmpeg_errors(av) as e:
            raise VideoError(f"error encoding frame {self._frames} of {str(self.path)!r}: {e}") from e

    def _end_time(self) -> Fraction:
        """Time just after the last written frame."""
        return self._last_pts * VIDEO_TIME_BASE + 1 / self.fps

    def _write_audio_until(self, t_end: Fraction) -> None:
        av = self._av
        stop = min(int(t_end * self._audio_rate), self._audio.shape[1])
        if stop <= self._audio_pos:
            return
        chunk = np.ascontiguousarray(self._audio[:, self._audio_pos:stop])
        af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self._astream.layout.name)
        af.sample_rate = self._audio_rate
        af.pts = self._audio_pos  # an explicit start lets the muxer record AAC's encoder delay (no audio lag)
        af.time_base = Fraction(1, self._audio_rate)
        for packet in self._astream.encode(af):
            self._container.mux(packet)
        self._audio_pos = stop

    # -- finishing -----------------------------------------------------------------------------------------------

    def close(self) -> Path:
        """Flush the encoders, finish the file and rename it onto ``path``. Returns ``path``.

        Raises:
            VideoError: no frame was written (nothing is created) or finishing failed (the temporary file is
                removed).
        """
        if self._closed:
            return self.path
        if self._frames == 0:
            err = VideoError(f"{str(self.path)!r}: no frames were written; nothing was created")
            self.abort(err)
            raise err
        av = self._av
        try:
            for packet in self._vstream.encode(None):
                self._container.mux(packet)
            if self._astream is not None:
                self._write_audio_until(self._end_time())
                for packet in self._astream.encode(None):
                    self._container.mux(packet)
            self._container.close()
            self._container = None
        except BaseException as e:
            self.abort(e)
            if isinstance(e, _ffmpeg_errors(av)):
                raise VideoError(f"error finishing {str(self.path)!r}: {e}") from e
            raise
        self._closed = True
        self._atomic.__exit__(None, None, None)
        self._finalizer.detach()
        return self.path

    def abort(self, reason: Optional[BaseException] = None) -> None:
        """Discard the video: close the encoder and delete the temporary file (the target is untouched)."""
        if self._closed:
            return
        self._closed = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is being thrown away; a muxer complaint changes nothing
                pass
            self._container = None
        err = reason if reason is not None else VideoError(f"{str(self.path)!r}: writing aborted")
        self._atomic.__exit__(type(err), err, err.__traceback__)
        self._finalizer.detach()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc)


__all__ = ["VideoReader", "VideoWriter", "VideoInfo", "Frame", "read_audio", "VIDEO_TIME_BASE"]
