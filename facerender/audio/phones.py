"""Per-step phone features from pocketsphinx (optional extra ``speech``): a drop-in for DeepSpeech's per-step
character logits, as an :class:`~facerender.audio.AudioFeatures` of kind ``"phones"``.

pocketsphinx's wheel ships the CMU US-English acoustic model and a phone language model; its all-phone search
decodes the most likely phone sequence (the Viterbi path: this search builds no lattice, so there are no true
posteriors). Each 10 ms step gets a one-hot vector over the 39 CMU phones plus silence (:data:`PHONES`; noise and
filler units count as silence). pocketsphinx's frame ``f`` analyses 25.6 ms from ``f * 10`` ms, centred 7.8 ms after
our step ``f``'s centre, so the features carry ``start = 0.0078`` s. The audio is decoded in utterances of
``utterance_seconds`` (30 s) from the streamed 16 kHz signal, so memory stays flat for long files (the phone path
restarts at each boundary).

About 0.1 s of CPU per second of audio (0.37 s for a 3-s clip), a hundred times the log-mel's cost.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ..errors import BackendUnavailableError
from .decode import SPEECH_RATE, resample, stream_audio, to_mono

#: The phone set, index = feature dimension: silence first, then the 39 CMU phones.
PHONES = ("SIL", "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH",
          "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W",
          "Y", "Z", "ZH")
#: Seconds between our step ``f``'s centre and pocketsphinx frame ``f``'s centre (12.8 ms - 5 ms).
PHONE_START = 0.0078


_DECODER = []  # one decoder per process, made on first use (loading the model takes about 0.7 s)


def _decoder():
    if _DECODER:
        return _DECODER[0]
    try:
        from pocketsphinx import Decoder, get_model_path
    except ImportError as e:
        raise BackendUnavailableError(f'phone features need pocketsphinx: pip install "facerender[speech]" '
                                      f"(import failed: {e})") from e
    mp = get_model_path()
    _DECODER.append(Decoder(allphone=os.path.join(mp, "en-us", "en-us-phone.lm.bin"), lw=2.0, beam=1e-20,
                            pbeam=1e-20, loglevel="FATAL"))
    return _DECODER[0]


def _decode(decoder, x: np.ndarray, steps: int) -> np.ndarray:
    out = np.zeros((steps, len(PHONES)), np.float32)
    out[:, 0] = 1.0
    if x.size == 0:
        return out
    pcm = (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    index = {p: i for i, p in enumerate(PHONES)}
    for seg in decoder.seg():
        k = index.get(str(seg.word).upper(), 0)
        a, b = max(int(seg.start_frame), 0), min(int(seg.end_frame) + 1, steps)
        if b > a:
            out[a:b] = 0.0
            out[a:b, k] = 1.0
    return out


def phone_features(source, *, sample_rate: Optional[int] = None, utterance_seconds: float = 30.0):
    """One-hot phone steps (100 per second, ``(T, 40)``) of a media file or of samples with ``sample_rate``.

    Returns:
        :class:`~facerender.audio.AudioFeatures` of kind ``"phones"`` (``start`` 7.8 ms, edge padding).

    Raises:
        BackendUnavailableError: pocketsphinx is not installed. Otherwise as :func:`compute_features`.
    """
    from .features import AudioFeatures

    dec = _decoder()
    hop = SPEECH_RATE // 100
    if isinstance(source, (str, os.PathLike)):
        infos: list = []
        chunks = stream_audio(source, SPEECH_RATE, utterance_seconds, infos)
    else:
        if sample_rate is None:
            raise ValueError("sample_rate is required when source is an array of samples")
        x = to_mono(np.asarray(source, dtype=np.float32))
        x = resample(x, int(sample_rate), SPEECH_RATE)
        n = max(1, int(utterance_seconds * SPEECH_RATE))
        chunks = (x[i:i + n] for i in range(0, len(x), n))
        infos = []
    blocks, total = [], 0
    for c in chunks:
        steps = -(-len(c) // hop)
        blocks.append(_decode(dec, c, steps))
        total += len(c)
    feats = np.concatenate(blocks) if blocks else np.zeros((0, len(PHONES)), np.float32)
    return AudioFeatures(features=feats, rate=100.0, start=PHONE_START, kind="phones", pad_value=None,
                         duration=total / SPEECH_RATE, info=infos[0] if infos else None,
                         extra={"phones": PHONES})


__all__ = ["PHONES", "PHONE_START", "phone_features"]
