"""Put a sound track under a finished video, streamed: :func:`mux_audio`.

The video's packets are copied as they are (no re-encoding); the audio is decoded from any file FFmpeg reads (wav,
mp3, m4a, the sound of a video ...) with :func:`~facerender.audio.stream_audio` (mono, resampled by libswresample in
chunks) and encoded to AAC with explicit timestamps from 0, so the muxer records the encoder's priming and the sound
starts with the first frame. It is cut at the video's end (last frame + one frame duration); a shorter sound simply
ends. Memory does not grow with the length: both streams go through in chunks, interleaved by time. The result is
written atomically (a failure leaves no file).
"""
from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import VideoError

log = logging.getLogger(__name__)

__all__ = ["mux_audio", "AAC_RATES"]

PathLike = Union[str, os.PathLike]

#: Sample rates the AAC encoder takes; other sources are resampled to 48 kHz.
AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


def mux_audio(video: PathLike, audio: PathLike, out: PathLike, *, offset: float = 0.0, bitrate: int = 128_000,
              sample_rate: Optional[int] = None, chunk_seconds: float = 2.0) -> Path:
    """Write ``out``: the video stream of ``video`` (copied) with the sound of ``audio`` (AAC, mono).

    Args:
        video: a video file (its first video stream; any audio in it is dropped).
        audio: any file with an audio stream.
        out: the output file (``.mp4`` / ``.mov`` / ``.mkv``); its folder must exist.
        offset: seconds of ``audio`` skipped at its start (the sound at ``offset`` plays with the first frame).
        bitrate: AAC bit rate. sample_rate: output rate (default: the source's when AAC takes it, else 48 kHz).
        chunk_seconds: decoding block.
    Returns:
        ``out``.
    Raises:
        FileNotFoundError, AudioError (no audio stream, unsupported rate), VideoError (unreadable files, encoding).
    """
    from ..io.atomic import atomic_write
    from ..io.video import _ffmpeg_errors, _import_av, _open_for_reading
    from .decode import probe_audio, stream_audio

    av = _import_av()
    video, audio, out = Path(video), Path(audio), Path(out)
    if not offset >= 0:
        raise ValueError(f"offset must be >= 0 seconds, got {offset}")
    info = probe_audio(audio)
    rate = int(sample_rate) if sample_rate else (info.sample_rate if info.sample_rate in AAC_RATES else 48000)
    if rate not in AAC_RATES:
        raise ValueError(f"sample_rate must be one of {AAC_RATES}, got {rate}")
    vin = _open_for_reading(video)
    try:
        if not vin.streams.video:
            raise VideoError(f"{str(video)!r} holds no video stream")
        vs_in = vin.streams.video[0]
        tb = vs_in.time_base
        # the video's end: the last frame's time + one frame (as VideoWriter cuts its audio)
        fps = vs_in.average_rate or vs_in.guessed_rate or Fraction(25)
        end: Optional[Fraction] = None
        skip = int(round(offset * rate))
        chunks = stream_audio(audio, rate, chunk_seconds)
        buf = np.zeros(0, np.float32)
        pos = 0  # samples written
        exhausted = False

        def pull(n_needed: int) -> None:
            nonlocal buf, exhausted, skip
            while buf.shape[0] < n_needed and not exhausted:
                try:
                    c = next(chunks)
                except StopIteration:
                    exhausted = True
                    break
                if skip:
                    k = min(skip, c.shape[0])
                    c, skip = c[k:], skip - k
                buf = np.concatenate([buf, c]) if buf.size else c

        with atomic_write(out) as tmp:
            oc = av.open(str(tmp), mode="w")
            try:
                vs_out = oc.add_stream_from_template(vs_in)
                aus = oc.add_stream("aac", rate=rate)
                aus.layout = "mono"
                aus.bit_rate = int(bitrate)

                def write_audio_until(t_end: Fraction) -> None:
                    nonlocal buf, pos
                    stop = int(t_end * rate)
                    if stop <= pos:
                        return
                    pull(stop - pos)
                    n = min(stop - pos, buf.shape[0])
                    if n <= 0:
                        return
                    af = av.AudioFrame.from_ndarray(np.ascontiguousarray(buf[:n])[None], format="fltp", layout="mono")
                    af.sample_rate = rate
                    af.pts = pos
                    af.time_base = Fraction(1, rate)
                    for p in aus.encode(af):
                        oc.mux(p)
                    buf = buf[n:]
                    pos += n

                last_end = Fraction(0)
                for packet in vin.demux(vs_in):
                    if packet.dts is None:  # the demuxer's flush packet
                        continue
                    packet.stream = vs_out
                    if packet.pts is not None:
                        last_end = max(last_end, Fraction(packet.pts) * tb + 1 / Fraction(fps))
                    oc.mux(packet)
                    write_audio_until(max(Fraction(0), last_end - 1 / Fraction(fps)))
                end = last_end
                write_audio_until(end)
                for p in aus.encode(None):
                    oc.mux(p)
            except _ffmpeg_errors(av) as e:
                raise VideoError(f"error muxing the sound of {str(audio)!r} under {str(video)!r}: {e}") from e
            finally:
                oc.close()
    finally:
        vin.close()
    log.info("muxed %.2f s of %s under %s", pos / rate, audio, video)
    return out
