"""Neural Voice Puppetry (Thies et al., ECCV 2020), audio half: Audio2ExpressionNet, its losses and method, the
speech-track datasets and the synthetic check (``docs/neural_voice_puppetry.md``). Audio features live in
:mod:`facerender.audio`."""
from .audio2expression import (Audio2ExpressionConfig, Audio2ExpressionMethod, Audio2ExpressionNet,
                               Audio2ExpressionOutput, AudioExpressionEncoder, IdentityMaps, LossWeights,
                               TemporalFilter, context_offsets, fit_identity_map, mouth_weights,
                               mouth_weights_from_model, temporal_loss, train_simple, vertex_gram, vertex_loss,
                               vertex_rms)
from .data import ClipData, FrameSequenceDataset, collate, load_speech_tracks

__all__ = [
    "Audio2ExpressionConfig", "Audio2ExpressionNet", "Audio2ExpressionOutput", "AudioExpressionEncoder",
    "TemporalFilter", "IdentityMaps", "Audio2ExpressionMethod", "LossWeights", "context_offsets", "vertex_gram",
    "vertex_rms", "vertex_loss", "temporal_loss", "mouth_weights", "mouth_weights_from_model", "fit_identity_map",
    "train_simple", "ClipData", "FrameSequenceDataset", "collate", "load_speech_tracks",
]
