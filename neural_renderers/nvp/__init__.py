"""Neural Voice Puppetry (Thies et al., ECCV 2020; ``docs/neural_voice_puppetry.md``).

* audio half: :class:`Audio2ExpressionNet` (audio windows -> a shared audio-expression code -> per-identity blendshape
  weights), its losses and the ``"nvp-audio"`` method, the speech-track datasets and the synthetic check;
* rendering half: the neural texture (:class:`NeuralTexture`, a Laplacian pyramid per UDIM tile sampled through the
  rasterised UV map), the deferred neural renderer (the ``"nvp-render"`` method), the lower-face compositing masks;
* :func:`train_nvp_audio`, :func:`train_nvp_render` and :func:`puppet` (``facerender train nvp-audio``,
  ``facerender train nvp-render``, ``facerender puppet``).

Audio features live in :mod:`facerender.audio`.
"""
from .audio2expression import (Audio2ExpressionConfig, Audio2ExpressionMethod, Audio2ExpressionNet,
                               Audio2ExpressionOutput, AudioExpressionEncoder, IdentityMaps, NVPAudioConfig,
                               TemporalFilter, context_offsets, fit_identity_map, mouth_weights,
                               mouth_weights_from_model, temporal_loss, vertex_gram, vertex_loss, vertex_rms)
from .data import ClipData, FrameSequenceDataset, collate, load_speech_tracks
from .render import NVP_MAPS, NeuralVoicePuppetryRenderer, NVPRenderConfig, crop_figures
from .targets import (MOUTH_PREFIXES, TargetMap, audio_features, fit_target_map, load_nvp_audio, mouth_mask,
                      predict_expressions)
from .texture import NeuralTexture, composite_masks, lower_face_weights, region_texture, sample_tiled
from .train import AUDIO_MODEL_FILE, load_nvp_render, open_target, train_nvp_audio, train_nvp_render

__all__ = [
    "Audio2ExpressionConfig", "Audio2ExpressionNet", "Audio2ExpressionOutput", "AudioExpressionEncoder",
    "TemporalFilter", "IdentityMaps", "Audio2ExpressionMethod", "NVPAudioConfig", "context_offsets", "vertex_gram",
    "vertex_rms", "vertex_loss", "temporal_loss", "mouth_weights", "mouth_weights_from_model", "fit_identity_map",
    "ClipData", "FrameSequenceDataset", "collate", "load_speech_tracks",
    "NVP_MAPS", "NeuralVoicePuppetryRenderer", "NVPRenderConfig", "crop_figures", "NeuralTexture", "sample_tiled",
    "composite_masks", "lower_face_weights", "region_texture", "MOUTH_PREFIXES", "TargetMap", "audio_features",
    "fit_target_map", "load_nvp_audio", "mouth_mask", "predict_expressions", "AUDIO_MODEL_FILE", "load_nvp_render",
    "open_target", "train_nvp_audio", "train_nvp_render",
]
