"""From speech to a target's expressions: loading a trained Audio2ExpressionNet, predicting whole clips in chunks,
and fitting a new target's identity map on its own track.

* :func:`load_nvp_audio` - the network of a ``facerender train nvp-audio`` run (or of the ``audio2expression.pt``
  a ``train nvp-render`` run stores with the target's map);
* :func:`audio_features` - the features a model was trained on (log-mel or phones) of any file with sound;
* :func:`predict_expressions` - ``(N, K)`` blendshape weights for frame times, computed in chunks of frames (the
  per-frame windows of a long clip are never all in memory);
* :func:`fit_target_map` - the target's affine map from the frozen shared codes of its own tracked, speaking
  frames, in closed form (:func:`~neural_renderers.nvp.audio2expression.fit_identity_map`); when the target has no
  usable speech the speakers' mean map is used, anchored at the target's neutral face (flagged).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import CheckpointError, TrainingError
from .audio2expression import Audio2ExpressionMethod, NVPAudioConfig, fit_identity_map

log = logging.getLogger(__name__)

__all__ = ["load_nvp_audio", "audio_features", "predict_expressions", "fit_target_map", "TargetMap",
           "save_target_audio_model", "MOUTH_PREFIXES", "mouth_mask"]

PathLike = Union[str, Path]

#: Blendshapes driven by the audio in a puppet (ICT-FaceKit names); the others stay the target frame's own.
MOUTH_PREFIXES = ("jaw", "mouth", "cheekPuff")


def mouth_mask(names) -> np.ndarray:
    """``(K,)`` bool: the blendshapes whose names start with :data:`MOUTH_PREFIXES`."""
    return np.array([str(n).startswith(MOUTH_PREFIXES) for n in names], dtype=bool)


def load_nvp_audio(source: PathLike, device: Union[str, torch.device] = "cpu"
                   ) -> Tuple[Audio2ExpressionMethod, Dict[str, Any]]:
    """The trained Audio2ExpressionNet of a run folder (``checkpoints/last.pt``) or of a checkpoint file, in eval
    mode, and its saved config (``{"method": ..., "step": ..., "path": ...}``).

    Raises:
        TrainingError (not a run), CheckpointError (missing, corrupt, another method, weights that do not fit).
    """
    from ..training import check_compatible, config_from_dict, load_checkpoint

    p = Path(source)
    if p.is_dir() and not (p / "checkpoints" / "last.pt").is_file():
        raise TrainingError(f"{str(p)!r} holds no trained audio model (no checkpoints/last.pt); train one with "
                            f"'facerender train nvp-audio -o RUN'")
    data = load_checkpoint(p, map_location="cpu")
    if data.get("method") != Audio2ExpressionMethod.name:
        raise CheckpointError(f"{data['path']} is a {data.get('method')!r} checkpoint, not an audio-to-expression "
                              f"model ('nvp-audio')")
    try:
        cfg = config_from_dict(NVPAudioConfig, data["config"]["method"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{data['path']}: its method config cannot be read ({e})") from e
    method = Audio2ExpressionMethod(cfg)
    check_compatible(data, method.name, method.signature())
    try:
        method.net.load_state_dict(data["networks"]["audio2expression"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{data['path']}: the network weights do not fit: {str(e).splitlines()[0]}") from e
    method.to(torch.device(device)).eval()
    return method, {"method": data["config"]["method"], "step": int(data["step"]), "path": data["path"]}


def audio_features(path: PathLike, kind: str = "log_mel"):
    """The features of kind ``kind`` (``"log_mel"`` or ``"phones"``) of a file with sound
    (:class:`~facerender.audio.AudioFeatures`, flags included)."""
    from facerender.audio import compute_features, phone_features

    if kind == "log_mel":
        return compute_features(path)
    if kind == "phones":
        feats = phone_features(path)
        mel = compute_features(path)  # the flags (silence, speech-likeness) come from the sound itself
        feats.silent, feats.speech_like, feats.speech_fraction = mel.silent, mel.speech_like, mel.speech_fraction
        feats.info, feats.duration = mel.info, mel.duration
        return feats
    raise ValueError(f"the model was trained on {kind!r} features; only 'log_mel' and 'phones' are computed here")


@torch.no_grad()
def predict_expressions(net, features, times: np.ndarray, identity: int = 0, chunk: int = 2048) -> np.ndarray:
    """Blendshape weights ``(N, K)`` for frames at ``times (N,)`` seconds.

    The encoder runs on chunks of ``chunk`` frames' windows (``(chunk, W, D)`` at a time), the temporal filter and
    the map on the ``(N, C)`` codes (context frames beyond the clip repeat its first / last frame, as
    :meth:`~neural_renderers.nvp.audio2expression.Audio2ExpressionNet.sequence_codes`).

    Args:
        net: :class:`~neural_renderers.nvp.Audio2ExpressionNet` (eval mode).
        features: :class:`~facerender.audio.AudioFeatures` with ``D = net.config.feature_dim``.
        times: frame times. identity: the map to use.
    """
    times = np.asarray(times, dtype=np.float64)
    codes = _filtered_codes(net, features, times, chunk)
    if codes.shape[0] == 0:
        return np.zeros((0, net.config.num_expressions), np.float32)
    ids = torch.full((codes.shape[0],), int(identity), device=codes.device)
    return net.maps(codes, ids).float().cpu().numpy()


@dataclass
class TargetMap:
    """A target's map ``expression = weight @ code + bias`` (``weight (K, C)``, ``bias (K,)``) and how it was made:
    ``source`` ``"fitted"`` (least squares on the target's own speaking frames) or ``"average"`` (the speakers' mean
    map, anchored at the target's neutral: no usable speech in the target), with the frames used and the jawOpen
    correlation of the fit on them (``fit_jaw_corr``) and on the target's held-out frames (``check_jaw_corr``)."""

    weight: np.ndarray
    bias: np.ndarray
    source: str
    frames: int = 0
    fit_jaw_corr: Optional[float] = None
    check_jaw_corr: Optional[float] = None
    note: str = ""
    audio: Dict[str, Any] = field(default_factory=dict)

    def summary(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("weight")
        d.pop("bias")
        return d


def _corr(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    if a.size < 3 or np.std(a) < 1e-9 or np.std(b) < 1e-9:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def fit_target_map(method: Audio2ExpressionMethod, video: PathLike, track, train_frames: np.ndarray,
                   check_frames: Optional[np.ndarray] = None, ridge: float = 1e-4, min_frames: int = 100
                   ) -> TargetMap:
    """The target's identity map from its own speech and track (see the module docstring).

    Args:
        method: the trained audio model (:func:`load_nvp_audio`). video: the target video (its audio).
        track: the target's :class:`~facerender.tracking.Track`.
        train_frames: ``(N,)`` bool, the frames the map may be fitted on (tracked, not held out).
        check_frames: ``(N,)`` bool, frames to report the map's jawOpen correlation on (e.g. the held-out end).
        ridge: Tikhonov weight (:func:`fit_identity_map`). min_frames: fewer usable frames -> the average map.
    Returns:
        :class:`TargetMap`.
    """
    from facerender.audio import frame_times
    from facerender.errors import AudioError, VideoError
    from facerender.reenact.common import actor_neutral

    net = method.net
    cfg = method.config
    names = list(track.expression_names)
    if len(names) != cfg.num_expressions:
        raise TrainingError(f"the audio model predicts {cfg.num_expressions} blendshapes, the target's track has "
                            f"{len(names)}")
    expr = np.asarray(track.expression, np.float64)
    valid = np.asarray(track.face_found, bool) & np.isfinite(expr).all(1)
    use = np.asarray(train_frames, bool) & valid
    jaw = names.index("jawOpen") if "jawOpen" in names else None
    info: Dict[str, Any] = {}
    reason = ""
    feats = None
    try:
        feats = audio_features(video, cfg.features)
        info = feats.summary()
        if feats.silent:
            reason = "its audio is silent"
        elif not feats.speech_like:
            reason = "its audio does not look like speech"
    except (AudioError, VideoError) as e:
        reason = f"its audio cannot be used ({str(e).split(':')[-1].strip() or type(e).__name__})"
    active = None
    if feats is not None and not reason:
        times = frame_times(len(track), track.fps)
        act = feats.frame_activity(times)
        active = act > 0.0
        use_speech = use & active
        if int(use_speech.sum()) < min_frames:
            reason = f"only {int(use_speech.sum())} tracked frames with sound (need {min_frames})"
    if not reason:
        codes = torch.from_numpy(_codes(net, feats, times))
        # silent frames teach the rest face too (as in training): every tracked frame of the training part
        W, b = fit_identity_map(codes[torch.from_numpy(use)], torch.from_numpy(expr[use]), ridge=ridge)
        W, b = W.numpy().astype(np.float32), b.numpy().astype(np.float32)
        pred = codes.numpy() @ W.T + b
        fit_c = _corr(pred[use, jaw], expr[use, jaw]) if jaw is not None else None
        chk = None
        if check_frames is not None and jaw is not None:
            ck = np.asarray(check_frames, bool) & valid
            chk = _corr(pred[ck, jaw], expr[ck, jaw]) if ck.sum() >= 3 else None
        return TargetMap(W, b, "fitted", int(use.sum()), fit_c, chk, "", info)
    # the speakers' mean map, anchored so that silence maps to the target's neutral face
    Wm = net.maps.weight.detach().float().mean(0).cpu().numpy()
    neutral = actor_neutral(expr, use if use.any() else valid).astype(np.float32)
    silence = _silence_code(net)
    b = neutral - Wm @ silence
    log.warning("the target's identity map could not be fitted (%s): using the speakers' mean map", reason)
    return TargetMap(Wm.astype(np.float32), b.astype(np.float32), "average", 0, None, None,
                     f"not fitted: {reason}; the mean of the trained speakers' maps is used, anchored at the "
                     f"target's neutral face", info)


@torch.no_grad()
def _filtered_codes(net, feats, times: np.ndarray, chunk: int = 2048) -> torch.Tensor:
    """Filtered codes ``(N, C)`` of frames at ``times``, in the network's dtype and device: the encoder on chunks of
    ``chunk`` frames' windows, the temporal filter on the codes (context beyond the clip repeats its first / last
    frame, as :meth:`~neural_renderers.nvp.audio2expression.Audio2ExpressionNet.sequence_codes`)."""
    cfg = net.config
    if feats.dim != cfg.feature_dim:
        raise ValueError(f"the audio model takes {cfg.feature_dim}-d features, got {feats.dim}-d ({feats.kind})")
    n = len(times)
    p = next(net.parameters())
    if n == 0:
        return p.new_zeros(0, cfg.code_dim)
    codes = torch.cat([net.encoder(torch.from_numpy(feats.windows(times[i:i + chunk], cfg.window_steps))
                                   .to(device=p.device, dtype=p.dtype)) for i in range(0, n, chunk)])
    off = torch.as_tensor(cfg.offsets, device=p.device)
    return torch.cat([net.filter(codes[(torch.arange(i, min(n, i + chunk), device=p.device)[:, None]
                                        + off[None]).clamp(0, n - 1)])[0] for i in range(0, n, chunk)])


def _codes(net, feats, times: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """:func:`_filtered_codes` as float64 numpy (for the target map's least squares)."""
    return _filtered_codes(net, feats, times, chunk).cpu().double().numpy()


@torch.no_grad()
def _silence_code(net) -> np.ndarray:
    """The filtered code of digital silence (every step at the log-mel floor)."""
    cfg = net.config
    dev = next(net.parameters()).device
    from facerender.audio import MelConfig

    w = torch.full((1, cfg.filter_frames, cfg.window_steps, cfg.feature_dim), MelConfig().floor, device=dev)
    codes = net.encoder(w)
    return net.filter(codes)[0][0].cpu().numpy()


def save_target_audio_model(method: Audio2ExpressionMethod, target_map: TargetMap, path: PathLike,
                            source: Dict[str, Any], target_name: str = "target") -> Path:
    """Write the audio model with the target's map as its only identity (a checkpoint of method ``"nvp-audio"``
    that :func:`load_nvp_audio` reads), atomically."""
    from ..training import config_to_dict, save_checkpoint

    cfg = NVPAudioConfig(**{**config_to_dict(method.config), "num_identities": 1, "speakers": (target_name,)})
    one = Audio2ExpressionMethod(cfg)
    sd = {k: v for k, v in method.net.state_dict().items() if not k.startswith("maps.")}
    one.net.load_state_dict(sd, strict=False)
    one.net.maps.set_map(0, torch.from_numpy(target_map.weight), torch.from_numpy(target_map.bias))
    payload = {"method": one.name, "signature": one.signature(),
               "config": {"method": config_to_dict(cfg), "train": {}}, "step": int(source.get("step", 0)),
               "networks": {"audio2expression": one.net.state_dict()},
               "target_map": target_map.summary(), "source": {k: str(v) for k, v in source.items()}}
    return save_checkpoint(Path(path), payload)
