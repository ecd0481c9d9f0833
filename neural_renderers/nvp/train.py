"""Training Neural Voice Puppetry's two networks with the shared trainer.

* :func:`train_nvp_audio` (``facerender train nvp-audio``): Audio2ExpressionNet on the speech tracks of every
  speaker (``benchmarks/prepare_speech_tracks.py`` writes them); the last 20 % of each speaker's timeline validates.
* :func:`train_nvp_render` (``facerender train nvp-render --target VIDEO``): the neural texture and the deferred
  neural renderer of one target video. Its conditioning (``"uv"``, ``"uv_tile"``, float16) and real crops are cached
  once (:func:`~neural_renderers.data.build_cache`); the first ``1 - val_fraction`` of the frames train, the end
  validates (never trained on). With an audio model, the target's identity map is fitted on its own track and stored
  with the run (``RUN/audio2expression.pt``), so ``facerender puppet --model RUN`` needs nothing else.

Both return the trainer's :class:`~neural_renderers.training.TrainResult`; checkpoints, exact resume, Ctrl-C and DDP
(``torchrun``) come from :class:`~neural_renderers.training.Trainer`.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import DatasetError, TrainingError
from ..training import TrainConfig, Trainer, TrainResult, config_from_dict, seed_everything
from .audio2expression import Audio2ExpressionMethod, NVPAudioConfig, mouth_weights_from_model
from .render import NVP_MAPS, NeuralVoicePuppetryRenderer, NVPRenderConfig

log = logging.getLogger(__name__)

__all__ = ["train_nvp_audio", "train_nvp_render", "load_nvp_render", "read_run_config", "open_target",
           "AUDIO_MODEL_FILE", "resume_train_config"]

PathLike = Union[str, Path]

#: The audio model with the target's map, stored in a ``train nvp-render`` run.
AUDIO_MODEL_FILE = "audio2expression.pt"


def read_run_config(run_dir: PathLike, method: str) -> Dict[str, Any]:
    """``RUN/config.json`` of a run of ``method`` (TrainingError when the folder holds no run or another method's)."""
    p = Path(run_dir) / "config.json"
    if not p.is_file():
        raise TrainingError(f"{str(run_dir)!r} is not a training run (no config.json); train one with "
                            f"'facerender train {method} ... -o RUN'")
    try:
        saved = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise TrainingError(f"{str(p)!r} is not valid JSON: {e}") from e
    if saved.get("method") != method:
        raise TrainingError(f"{str(run_dir)!r} is a {saved.get('method')!r} run, not {method!r}")
    return saved


def resume_train_config(saved: Dict[str, Any], train: TrainConfig) -> TrainConfig:
    """The run's own train config (data order, batch, seed) with the new step count and runtime settings."""
    old = config_from_dict(TrainConfig, saved["train"])
    return TrainConfig(**{**asdict(old), "steps": train.steps, "max_minutes": train.max_minutes,
                          "num_workers": train.num_workers, "device": train.device, "threads": train.threads,
                          "progress": train.progress, "amp": train.amp, "tensorboard": train.tensorboard})


# --------------------------------------------------------------------------------------------- nvp-audio
def train_nvp_audio(tracks_dir: Optional[PathLike], run_dir: PathLike, *, config: Optional[NVPAudioConfig] = None,
                    train: Optional[TrainConfig] = None, model=None, resume: bool = False,
                    speakers: Optional[Sequence[str]] = None, features: str = "log_mel",
                    data_dir: Optional[PathLike] = None) -> TrainResult:
    """Train (or resume) Audio2ExpressionNet on speech tracks.

    Args:
        tracks_dir: the folder with ``manifest.json`` (``benchmarks/prepare_speech_tracks.py --out``). Ignored
            when resuming (the run's own).
        run_dir: the run folder.
        config: :class:`NVPAudioConfig` (its ``feature_dim``, ``num_identities``, ``speakers`` and ``features`` are
            set from the data).
        train: :class:`~neural_renderers.training.TrainConfig` (the CLI's defaults: 5000 steps of 64, linear decay
            from 30 %).
        model: the face model of the tracks (default ``load_ict()``): its face area and mouth weights make the loss.
        speakers: a subset of the manifest's speakers. features: ``"log_mel"`` or ``"phones"``.
        data_dir: the speech data folder when it moved (default: the manifest's).
    Raises:
        FileNotFoundError (no manifest), ValueError (unknown speaker / split), TrainingError / CheckpointError.
    """
    from morphable_models import load_ict

    from .data import FrameSequenceDataset, load_speech_tracks

    run = Path(run_dir)
    train = train or TrainConfig(steps=5000, batch_size=64, lr_decay_start=0.3, checkpoint_every=500,
                                 sample_every=10 ** 9, val_every=500)
    if resume:
        saved = read_run_config(run, Audio2ExpressionMethod.name)
        config = config_from_dict(NVPAudioConfig, saved["method_config"])
        data = saved["data"]
        tracks_dir, speakers, features = data["tracks"], list(config.speakers), config.features
        data_dir = data.get("data_dir")
        train = resume_train_config(saved, train)
    if tracks_dir is None:
        raise ValueError("give the speech tracks folder (benchmarks/prepare_speech_tracks.py --out)")
    clips, names = load_speech_tracks(tracks_dir, "train", speakers=speakers, data_dir=data_dir, features=features)
    held, _ = load_speech_tracks(tracks_dir, "heldout", speakers=names, data_dir=data_dir, features=features)
    if not clips:
        raise DatasetError(f"{str(tracks_dir)!r} holds no training frames")
    ds = FrameSequenceDataset(clips)
    val = FrameSequenceDataset(held) if held else None
    base = asdict(config) if config is not None else {}
    base.update(feature_dim=ds.feature_dim, num_expressions=ds.num_expressions, num_identities=len(names),
                speakers=tuple(names), features=features)
    config = NVPAudioConfig(**base)
    model = model or load_ict()
    face = model.submodel("face") if "face" in (getattr(model, "regions", {}) or {}) else model
    with torch.no_grad():
        basis = face.expression_basis_3d().detach()
    weights = mouth_weights_from_model(face, config.mouth_radius, config.mouth_weight)
    if not resume:
        seed_everything(train.seed)
    method = Audio2ExpressionMethod(config, basis=basis, vertex_weights=weights)
    if not resume:  # each speaker's map starts at its mean expression (ICT's weights are not zero-mean)
        with torch.no_grad():
            for i in range(len(names)):
                e = [c.expression[c.start:c.stop][c.valid[c.start:c.stop]] for c in clips if c.identity == i]
                e = np.concatenate(e) if e else np.zeros((0, ds.num_expressions))
                if len(e):
                    method.net.maps.bias[i] = torch.from_numpy(e.mean(0)).float()
    description = {"tracks": str(Path(tracks_dir).resolve()), "data_dir": str(data_dir) if data_dir else None,
                   "speakers": names, "features": features, "train_frames": len(ds),
                   "heldout_frames": len(val) if val is not None else 0,
                   "clips": {"train": len(clips), "heldout": len(held)}, "model": getattr(model, "name", "?")}
    trainer = Trainer(method, ds, run, train, val_data=val, data_description=description, resume=resume)
    return trainer.fit()


# --------------------------------------------------------------------------------------------- nvp-render
def _is_track_dir(p: Path) -> bool:
    return p.is_dir() and (p / "params.npz").is_file()


def open_target(target: Optional[PathLike], video: Optional[PathLike], model, *, track_into: Optional[Path] = None,
                max_frames: Optional[int] = None, progress: bool = True):
    """A :class:`~neural_renderers.data.TrackedVideo` from a video (tracked into ``track_into`` unless done) or a
    ``facerender track`` folder (with ``video`` when it moved)."""
    from ..data import TrackedVideo

    if target is None and video is None:
        raise ValueError("give the target video or its track folder")
    t = Path(target) if target is not None else Path(video)
    if _is_track_dir(t):
        return TrackedVideo.open(video, t, model=model, progress=progress)
    if not t.is_file():
        raise FileNotFoundError(f"no such video or track folder: {str(t)!r}")
    return TrackedVideo.open(t, None, model=model, track_into=track_into, max_frames=max_frames, progress=progress)


def train_nvp_render(target: Optional[PathLike], run_dir: PathLike, *, config: Optional[NVPRenderConfig] = None,
                     train: Optional[TrainConfig] = None, audio_model: Optional[PathLike] = None,
                     video: Optional[PathLike] = None, model=None, resume: bool = False, val_fraction: float = 0.2,
                     max_frames: Optional[int] = None, cache_dir: Optional[PathLike] = None,
                     crop_scale: float = 1.7, min_train_frames: int = 50, progress: bool = True) -> TrainResult:
    """Train (or resume) the neural texture and renderer of one target video (see the module docstring).

    Args:
        target: the target video, or a folder written by ``facerender track`` (its video is the one recorded in
            it, or ``video``). Ignored when resuming.
        run_dir: the run folder.
        config: :class:`NVPRenderConfig` (default: 256^2, the paper's texture).
        train: :class:`~neural_renderers.training.TrainConfig`.
        audio_model: a ``train nvp-audio`` run: the target's identity map is fitted on its own track (frames before
            the held-out end) and stored as ``RUN/audio2expression.pt``. Given on ``resume``, the map is refitted.
        model: the face model (default ``load_ict()``).
        val_fraction: the held-out end of the video (default the last 20 %).
        max_frames: track only the first frames (tracking a video here).
        cache_dir: where conditioning caches go (default beside the track).
        crop_scale: crop side / median face size.
        min_train_frames: fewer tracked training frames is a DatasetError (a neural texture needs views).
    Raises:
        DatasetError (a track that does not match its video, too few tracked frames), TrainingError /
        CheckpointError (the run, the audio model), FileNotFoundError.
    """
    from morphable_models import load_ict

    from ..data import ConditioningSettings, WindowDataset, build_cache, split_frames
    from .targets import fit_target_map, load_nvp_audio, save_target_audio_model
    from .texture import region_texture

    run = Path(run_dir)
    train = train or TrainConfig()
    if resume:
        saved = read_run_config(run, NeuralVoicePuppetryRenderer.name)
        config = config_from_dict(NVPRenderConfig, saved["method_config"])
        data = saved["data"]
        target, video, val_fraction = data["track"], data["video"], data["val_fraction"]
        crop_scale = data["settings"]["crop_scale"]
        train = resume_train_config(saved, train)
    config = config or NVPRenderConfig()
    model = model or load_ict()
    source = open_target(target, video, model, track_into=run / "target_track", max_frames=max_frames,
                         progress=progress)
    tr = source.track
    valid = np.asarray(tr.face_found, bool) & np.isfinite(tr.expression).all(1)
    split_frames(len(tr), valid, val_fraction, min_train=min_train_frames, name=str(source.video))
    settings = ConditioningSettings(size=config.size, maps=NVP_MAPS, crop_scale=crop_scale, storage="float16")
    cache = build_cache(source, model, settings, cache_dir=cache_dir, progress=progress)
    train_ds = WindowDataset(cache, 1, "train", val_fraction, min_train=min_train_frames)
    val_ds = WindowDataset(cache, 1, "val", val_fraction) if val_fraction > 0 else None
    audio_info: Dict[str, Any] = {}
    if audio_model is not None:
        audio, audio_saved = load_nvp_audio(audio_model)
        cut = int(np.floor(len(tr) * (1 - val_fraction)))
        frames = np.arange(len(tr))
        tmap = fit_target_map(audio, source.video, tr, frames < cut, frames >= cut)
        run.mkdir(parents=True, exist_ok=True)
        save_target_audio_model(audio, tmap, run / AUDIO_MODEL_FILE,
                                {"audio_model": Path(audio_model).resolve(), "step": audio_saved["step"],
                                 "target": source.video}, target_name=Path(source.video).stem)
        audio_info = {"audio_model": str(Path(audio_model).resolve()), "audio_model_step": audio_saved["step"],
                      "map": tmap.summary()}
        if tmap.source != "fitted":
            log.warning("target %s: %s", source.video, tmap.note)
    elif resume:
        audio_info = {k: v for k, v in saved["data"].items() if k in ("audio_model", "audio_model_step", "map")}
    if not resume:
        seed_everything(train.seed)
    region = region_texture(model, config.region_size, config.tiles, slots=config.slots)
    method = NeuralVoicePuppetryRenderer(config, region=region)
    description = {"video": str(source.video), "video_fingerprint": source.fingerprint,
                   "track": str(source.track_dir), "track_fingerprint": source.track_fingerprint,
                   "cache": str(cache.folder), "settings": settings.key(), "val_fraction": val_fraction,
                   "frames": cache.num_frames, "train_frames": len(train_ds),
                   "val_frames": len(val_ds) if val_ds is not None else 0, "model": getattr(model, "name", "?"),
                   **audio_info}
    trainer = Trainer(method, train_ds, run, train, val_data=val_ds, data_description=description, resume=resume)
    return trainer.fit()


def load_nvp_render(run_dir: PathLike, device: Union[str, torch.device] = "cpu", model=None
                    ) -> Tuple[NeuralVoicePuppetryRenderer, Dict[str, Any]]:
    """The trained renderer of a ``train nvp-render`` run (``checkpoints/last.pt``, eval mode, its lower-face region
    baked from ``model``, default ``load_ict()``) and the run's config dict (``checkpoint_step`` added).

    Raises:
        TrainingError (not an nvp-render run), CheckpointError (missing, corrupt or mismatched checkpoint).
    """
    from morphable_models import load_ict

    from ..errors import CheckpointError
    from ..training import check_compatible, load_checkpoint
    from .texture import region_texture

    saved = read_run_config(run_dir, NeuralVoicePuppetryRenderer.name)
    cfg = config_from_dict(NVPRenderConfig, {**saved["method_config"], "vgg_weights": None, "lambda_vgg": 0.0})
    model = model or load_ict()
    region = region_texture(model, cfg.region_size, cfg.tiles, slots=cfg.slots)
    method = NeuralVoicePuppetryRenderer(cfg, region=region)
    data = load_checkpoint(Path(run_dir) / "checkpoints" / "last.pt", map_location="cpu")
    check_compatible(data, method.name, method.signature())
    try:
        for n, m in method.networks().items():
            m.load_state_dict(data["networks"][n])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{data['path']}: the weights do not fit: {str(e).splitlines()[0]}") from e
    method.to(torch.device(device)).eval()
    saved["checkpoint_step"] = int(data["step"])
    return method, saved
