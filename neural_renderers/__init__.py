"""Neural renderers: methods that learn to render a person (Deep Video Portraits, Neural Voice Puppetry), on one
trainer (``docs/training.md``).

One import per task (names are imported on first use: ``import neural_renderers`` imports no torch)::

    import neural_renderers as nr
    res = nr.train_dvp("../shared/data/video/talking_d3.mp4", "runs/dvp")      # facerender train dvp
    out = nr.dvp_reenact("runs/dvp", "source.mp4", None, "out/dvp")           # = facerender.reenact.dvp
    audio = nr.train_nvp_audio(...)                                           # facerender train nvp-audio
    res = nr.puppet("speech.wav", "runs/nvp_s1", "out/nvp")                  # facerender puppet

Sub-packages: :mod:`neural_renderers.training` (Trainer, methods, checkpoints), :mod:`neural_renderers.data`,
:mod:`neural_renderers.networks`, :mod:`neural_renderers.dvp`, :mod:`neural_renderers.nvp`.
"""
from morphable_models._lazy import attach as _attach

_EXPORTS = {
    # Deep Video Portraits
    "train_dvp": ".dvp", "load_dvp": ".dvp", "dvp_reenact": ".dvp", "DVPConfig": ".dvp",
    "DVPReenactConfig": ".dvp", "DeepVideoPortraits": ".dvp",
    # Neural Voice Puppetry
    "train_nvp_audio": ".nvp", "train_nvp_render": ".nvp", "Audio2ExpressionNet": ".nvp",
    "NeuralVoicePuppetryRenderer": ".nvp", "puppet": ".nvp.puppet", "PuppetConfig": ".nvp.puppet",
    # the shared trainer
    "Trainer": ".training", "TrainConfig": ".training", "TrainResult": ".training", "Method": ".training",
    "register_method": ".training", "available_methods": ".training",
}

_SUBMODULES = ("blocks", "cli", "data", "dvp", "errors", "losses", "networks", "nvp", "training")

__getattr__, __dir__, __all__ = _attach(__name__, _EXPORTS, _SUBMODULES)
