"""Speech audio for audio-driven methods (Neural Voice Puppetry; ``docs/neural_voice_puppetry.md``).

Decoding (streamed, 16 kHz mono), log-mel features in torch (CPU / CUDA, batched), per-video-frame windows, a
speech / silence screen, and the ``.npz`` format for features computed elsewhere. No network is involved.
Importing this package imports neither PyAV, scipy nor pocketsphinx (they load on first use).
"""
from .decode import SPEECH_RATE, AudioInfo, load_audio, probe_audio, resample, stream_audio, to_mono
from .features import (WINDOW_STEPS, AudioFeatures, compute_features, frame_times, frame_windows, iter_log_mel,
                       load_features, save_features, speech_screen, window_starts)
from .mel import LogMel, MelConfig, MelStream, frames_to_log_mel, log_mel, mel_filterbank, preemphasis
from .phones import PHONES, phone_features

__all__ = [
    "SPEECH_RATE", "AudioInfo", "probe_audio", "stream_audio", "load_audio", "to_mono", "resample",
    "MelConfig", "LogMel", "MelStream", "log_mel", "mel_filterbank", "frames_to_log_mel", "preemphasis",
    "WINDOW_STEPS", "AudioFeatures", "compute_features", "iter_log_mel", "frame_times", "frame_windows",
    "window_starts", "speech_screen", "save_features", "load_features", "PHONES", "phone_features",
]
