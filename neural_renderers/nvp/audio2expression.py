"""Neural Voice Puppetry's Audio2ExpressionNet: audio windows -> a shared 32-d audio-expression code -> per-identity
blendshape weights (Thies et al., ECCV 2020; layer sizes checked against the authors' released inference code).

Per video frame the input is a window of ``W = 16`` feature steps (``(W, D)``: log-mel ``D = 80`` by default, or the
paper's DeepSpeech ``D = 29``, or any ``.npz`` features; :mod:`facerender.audio`):

1. :class:`AudioExpressionEncoder`, per frame: four 1-D convolutions over the window's steps (kernel 3, stride 2,
   ``D -> 32 -> 32 -> 64 -> 64`` channels, 16 -> 8 -> 4 -> 2 -> 1 steps, LeakyReLU 0.02, 0.02, 0.2, 0.2), then fully
   connected ``64 -> 128 -> 64 -> 32`` (LeakyReLU 0.02) and tanh: the person-independent audio-expression code.
2. :class:`TemporalFilter` (content-aware temporal filtering): the codes of ``S = 8`` neighbouring frames (frames
   ``t-3 .. t+4``, the reference code's look-ahead layout) go through 1-D convolutions ``32 -> 16 -> 8 -> 4 -> 2 -> 1``
   over the frames, a linear layer ``S -> S`` and a softmax: attention weights; the filtered code is the weighted sum.
3. :class:`IdentityMaps`: per identity an affine map from the 32-d code to ICT-FaceKit's ``K = 53`` blendshape
   weights. The paper's map is linear; an offset is added because ICT's weights are not zero-mean (a speaker's rest
   face has non-zero mouthClose / mouthPress ...); it is initialised to that speaker's mean expression.

Losses (pure functions): :func:`vertex_rms` -- the RMS of the expression difference turned into mesh vertex offsets,
the mouth region weighted x10 -- computed exactly through the ``K x K`` Gram matrix of the weighted blendshape basis
(:func:`vertex_gram`), and the temporal term on consecutive-frame differences. :class:`Audio2ExpressionMethod` puts
them together as the reference code does: absolute terms at ``t-1, t, t+1`` (weight 1 each), the unfiltered code of
frame ``t`` (weight 3), and the three frame-difference terms (weight 20 each) -- the reference's 1000 / 3000 / 20000
ratios.

A new target only needs its own map: :func:`fit_identity_map` solves it in closed form (least squares) from the
frozen shared codes of its tracked frames.

:class:`Audio2ExpressionMethod` is the method of the shared trainer (``"nvp-audio"``, ``facerender train nvp-audio``;
:func:`~neural_renderers.nvp.train.train_nvp_audio`): checkpoints, exact resume and DDP come from
:class:`~neural_renderers.training.Trainer`.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..training.method import Method, Phase, register_method

log = logging.getLogger(__name__)

__all__ = ["Audio2ExpressionConfig", "AudioExpressionEncoder", "TemporalFilter", "IdentityMaps",
           "Audio2ExpressionNet", "Audio2ExpressionOutput", "Audio2ExpressionMethod", "NVPAudioConfig",
           "context_offsets", "vertex_gram", "vertex_rms", "vertex_loss", "temporal_loss", "mouth_weights",
           "mouth_weights_from_model", "fit_identity_map"]


def context_offsets(filter_frames: int) -> Tuple[int, ...]:
    """Frame offsets seen by the temporal filter for frame ``t``: ``-(S//2 - 1) .. S - S//2`` (``-3 .. 4`` for 8)."""
    if filter_frames < 1:
        raise ValueError(f"filter_frames must be >= 1, got {filter_frames}")
    lo = -(filter_frames // 2 - 1) if filter_frames > 1 else 0
    return tuple(range(lo, lo + filter_frames))


@dataclass(frozen=True)
class Audio2ExpressionConfig:
    """Sizes of :class:`Audio2ExpressionNet`.

    Attributes:
        feature_dim: ``D`` of the feature steps (80 log-mel, 29 DeepSpeech). window_steps: ``W`` (16).
        code_dim: the audio-expression code (32). filter_frames: ``S`` frames of the temporal filter (8).
        num_expressions: ``K`` blendshapes (53 for ICT-FaceKit). num_identities: maps to hold.
    """

    feature_dim: int = 80
    window_steps: int = 16
    code_dim: int = 32
    filter_frames: int = 8
    num_expressions: int = 53
    num_identities: int = 1

    def __post_init__(self):
        for k in ("feature_dim", "window_steps", "code_dim", "filter_frames", "num_expressions", "num_identities"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")

    @property
    def offsets(self) -> Tuple[int, ...]:
        return context_offsets(self.filter_frames)

    @property
    def center_index(self) -> int:
        """Position of frame ``t`` in the filter's sequence (3 for 8 frames)."""
        return self.offsets.index(0)

    def to_dict(self) -> Dict[str, int]:
        return asdict(self)


def _check_windows(windows: torch.Tensor, cfg: Audio2ExpressionConfig, extra: str = "") -> None:
    if not isinstance(windows, torch.Tensor) or not windows.is_floating_point():
        raise TypeError(f"windows must be a float tensor, got {type(windows).__name__}"
                        f"{'' if not isinstance(windows, torch.Tensor) else ' ' + str(windows.dtype)}")
    if windows.ndim < 2 or tuple(windows.shape[-2:]) != (cfg.window_steps, cfg.feature_dim):
        raise ValueError(f"windows must end in (W, D) = ({cfg.window_steps}, {cfg.feature_dim}){extra}, got shape "
                         f"{tuple(windows.shape)}")


class AudioExpressionEncoder(nn.Module):
    """Per-frame audio window ``(..., W, D)`` -> audio-expression code ``(..., C)`` in ``(-1, 1)`` (see the module
    docstring for the layers)."""

    def __init__(self, config: Audio2ExpressionConfig = Audio2ExpressionConfig()):
        super().__init__()
        self.config = config
        D = config.feature_dim
        self.conv = nn.Sequential(
            nn.Conv1d(D, 32, 3, stride=2, padding=1), nn.LeakyReLU(0.02),
            nn.Conv1d(32, 32, 3, stride=2, padding=1), nn.LeakyReLU(0.02),
            nn.Conv1d(32, 64, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv1d(64, 64, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        )
        steps = config.window_steps
        for _ in range(4):
            steps = (steps - 1) // 2 + 1
        self.fc = nn.Sequential(
            nn.Linear(64 * steps, 128), nn.LeakyReLU(0.02),
            nn.Linear(128, 64), nn.LeakyReLU(0.02),
            nn.Linear(64, config.code_dim), nn.Tanh(),
        )

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        _check_windows(windows, self.config)
        lead = windows.shape[:-2]
        x = windows.reshape(-1, *windows.shape[-2:]).transpose(1, 2)  # (N, D, W)
        return self.fc(self.conv(x).flatten(1)).reshape(*lead, self.config.code_dim)


class TemporalFilter(nn.Module):
    """Content-aware temporal filtering: codes ``(B, S, C)`` -> ``(filtered (B, C), attention (B, S))``; the attention
    weights are positive and sum to 1 over the ``S`` frames."""

    def __init__(self, code_dim: int = 32, frames: int = 8):
        super().__init__()
        self.frames = frames
        chans = [code_dim, 16, 8, 4, 2, 1]
        layers: List[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv1d(a, b, 3, padding=1), nn.LeakyReLU(0.02)]
        self.conv = nn.Sequential(*layers)
        self.linear = nn.Linear(frames, frames)

    def forward(self, codes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if codes.ndim != 3 or codes.shape[1] != self.frames:
            raise ValueError(f"codes must be (B, S={self.frames}, C), got shape {tuple(codes.shape)}")
        logits = self.linear(self.conv(codes.transpose(1, 2))[:, 0])  # (B, S)
        att = torch.softmax(logits, dim=1)
        return torch.einsum("bs,bsc->bc", att, codes), att


class IdentityMaps(nn.Module):
    """Per-identity affine maps ``code (B, C) -> expression (B, K)``: ``weight (I, K, C)``, ``bias (I, K)``."""

    def __init__(self, num_identities: int, num_expressions: int, code_dim: int, init_std: float = 0.01):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_identities, num_expressions, code_dim) * init_std)
        self.bias = nn.Parameter(torch.zeros(num_identities, num_expressions))

    @property
    def num_identities(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, code: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        identity = torch.as_tensor(identity, device=code.device).long().reshape(-1)
        if identity.numel() == 1 and code.shape[0] != 1:
            identity = identity.expand(code.shape[0])
        if identity.shape[0] != code.shape[0]:
            raise ValueError(f"identity has {identity.shape[0]} entries for a batch of {code.shape[0]} codes")
        if identity.numel() and (int(identity.min()) < 0 or int(identity.max()) >= self.num_identities):
            raise IndexError(f"identity ids must lie in [0, {self.num_identities}), got "
                             f"[{int(identity.min())}, {int(identity.max())}]")
        return torch.einsum("bkc,bc->bk", self.weight[identity], code) + self.bias[identity]

    @torch.no_grad()
    def set_map(self, index: int, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Overwrite identity ``index``'s map with ``weight (K, C)`` and ``bias (K,)``."""
        self.weight[index].copy_(torch.as_tensor(weight, dtype=self.weight.dtype))
        self.bias[index].copy_(torch.as_tensor(bias, dtype=self.bias.dtype))

    @torch.no_grad()
    def add_identity(self, weight: torch.Tensor, bias: torch.Tensor) -> int:
        """Append a map (a new target); returns its index. (Re-create optimizers afterwards.)"""
        w = torch.as_tensor(weight, dtype=self.weight.dtype, device=self.weight.device)[None]
        b = torch.as_tensor(bias, dtype=self.bias.dtype, device=self.bias.device)[None]
        self.weight = nn.Parameter(torch.cat([self.weight.data, w]))
        self.bias = nn.Parameter(torch.cat([self.bias.data, b]))
        return self.num_identities - 1


@dataclass
class Audio2ExpressionOutput:
    """``expression (B, K)`` from the filtered code; ``code (B, C)`` filtered; ``frame_codes (B, S, C)``;
    ``attention (B, S)``; ``expression_center (B, K)`` from frame ``t``'s unfiltered code."""

    expression: torch.Tensor
    code: torch.Tensor
    frame_codes: torch.Tensor
    attention: torch.Tensor
    expression_center: torch.Tensor


class Audio2ExpressionNet(nn.Module):
    """Encoder + temporal filter + identity maps (see the module docstring).

    ``forward(windows (B, S, W, D), identity (B,))`` -> :class:`Audio2ExpressionOutput`: the ``S`` windows are those
    of frames ``t + offsets`` (``config.offsets``, ``-3 .. 4``). :meth:`predict_sequence` runs whole clips.
    """

    def __init__(self, config: Audio2ExpressionConfig = Audio2ExpressionConfig()):
        super().__init__()
        self.config = config
        self.encoder = AudioExpressionEncoder(config)
        self.filter = TemporalFilter(config.code_dim, config.filter_frames)
        self.maps = IdentityMaps(config.num_identities, config.num_expressions, config.code_dim)

    def forward(self, windows: torch.Tensor, identity: torch.Tensor, triplet: bool = False):
        """``windows (B, S, W, D)`` -> :class:`Audio2ExpressionOutput`; with ``triplet=True``, ``windows
        (B, S + 2, W, D)`` (frames ``t + offsets[0] - 1 .. t + offsets[-1] + 1``) -> ``(expression (B, 3, K)`` at
        ``t-1, t, t+1``, ``expression_center (B, K))`` of frame ``t``'s unfiltered code (the training pass: one
        call, so DistributedDataParallel sees every parameter used)."""
        cfg = self.config
        S = cfg.filter_frames + (2 if triplet else 0)
        _check_windows(windows, cfg, f" after (B, S={S})")
        if windows.ndim != 4 or windows.shape[1] != S:
            what = "S + 2 = " if triplet else "S="
            raise ValueError(f"windows must be (B, {what}{S}, W, D), got shape {tuple(windows.shape)}")
        codes = self.encoder(windows)
        if not triplet:
            return self.from_codes(codes, identity)
        S = cfg.filter_frames
        outs = [self.from_codes(codes[:, j:j + S], identity) for j in range(3)]
        return torch.stack([o.expression for o in outs], dim=1), outs[1].expression_center

    def from_codes(self, codes: torch.Tensor, identity: torch.Tensor) -> Audio2ExpressionOutput:
        """The filter and the maps on per-frame codes ``(B, S, C)``."""
        code, att = self.filter(codes)
        center = codes[:, self.config.center_index]
        return Audio2ExpressionOutput(self.maps(code, identity), code, codes, att, self.maps(center, identity))

    def sequence_codes(self, windows: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        """Filtered codes ``(N, C)`` of a whole clip's per-frame windows ``(N, W, D)`` (context frames beyond the
        clip repeat its first / last frame)."""
        _check_windows(windows, self.config)
        if windows.ndim != 3:
            raise ValueError(f"windows must be (N, W, D), got shape {tuple(windows.shape)}")
        n = windows.shape[0]
        frame = torch.cat([self.encoder(windows[i:i + batch]) for i in range(0, n, batch)]) if n else \
            windows.new_zeros((0, self.config.code_dim))
        off = torch.as_tensor(self.config.offsets, device=windows.device)
        idx = (torch.arange(n, device=windows.device)[:, None] + off[None]).clamp(0, max(n - 1, 0))
        out = [self.filter(frame[idx[i:i + batch]])[0] for i in range(0, n, batch)]
        return torch.cat(out) if out else frame

    def predict_sequence(self, windows: torch.Tensor, identity: int, batch: int = 4096) -> torch.Tensor:
        """Expressions ``(N, K)`` of a clip's per-frame windows ``(N, W, D)`` for identity ``identity``."""
        codes = self.sequence_codes(windows, batch)
        ids = torch.full((codes.shape[0],), int(identity), dtype=torch.long, device=codes.device)
        return self.maps(codes, ids)


# --------------------------------------------------------------------------------------------------- losses
def vertex_gram(basis: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``G = sum_v w_v B_v B_v^T / (3 sum_v w_v)`` (``(K, K)``) so that ``d^T G d`` is the weighted mean squared vertex
    offset of an expression difference ``d``.

    Args:
        basis: ``(K, V, 3)`` blendshape offsets (model units, cm for ICT). weights: ``(V,)`` non-negative (ones).
    """
    if basis.ndim != 3 or basis.shape[-1] != 3:
        raise ValueError(f"basis must be (K, V, 3), got shape {tuple(basis.shape)}")
    K, V, _ = basis.shape
    w = torch.ones(V, dtype=basis.dtype, device=basis.device) if weights is None else weights.to(basis)
    if w.shape != (V,) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"weights must be (V={V},) non-negative with a positive sum, got shape {tuple(w.shape)}")
    b = basis.reshape(K, V * 3) * w.repeat_interleave(3).sqrt()[None]
    return (b @ b.T) / (3.0 * w.sum())


def vertex_rms(diff: torch.Tensor, gram: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Weighted RMS vertex offset of expression differences ``diff (B, K)``: ``sqrt(mean_b d_b^T G d_b + eps)``
    (a scalar; ``gram`` from :func:`vertex_gram`)."""
    if diff.ndim != 2 or diff.shape[1] != gram.shape[0]:
        raise ValueError(f"diff must be (B, K={gram.shape[0]}), got shape {tuple(diff.shape)}")
    q = torch.einsum("bk,kl,bl->b", diff, gram.to(diff), diff)
    return torch.sqrt(q.clamp_min(0).mean() + eps)


def vertex_loss(pred: torch.Tensor, target: torch.Tensor, basis: torch.Tensor,
                weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The same RMS as :func:`vertex_rms` computed directly on the vertices: ``(pred - target) (B, K)`` through
    ``basis (K, V, 3)``, weighted per vertex by ``weights (V,)`` (the reference; the method uses the Gram form)."""
    d = torch.einsum("bk,kvc->bvc", pred - target, basis.to(pred))
    w = torch.ones(basis.shape[1], dtype=pred.dtype, device=pred.device) if weights is None else weights.to(pred)
    return torch.sqrt((w[None, :, None] * d * d).sum() / (3.0 * w.sum() * d.shape[0]) + 1e-12)


def temporal_loss(pred: torch.Tensor, target: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Temporal term on consecutive frames: ``pred, target (B, 3, K)`` at ``t-1, t, t+1``; the vertex RMS of
    ``(p_a - p_b) - (g_a - g_b)`` for the pairs (t-1, t), (t, t+1), (t-1, t+1), summed."""
    if pred.ndim != 3 or pred.shape[1] != 3 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be (B, 3, K), got {tuple(pred.shape)}, {tuple(target.shape)}")
    total = pred.new_zeros(())
    for a, b in ((0, 1), (1, 2), (0, 2)):
        total = total + vertex_rms((pred[:, a] - pred[:, b]) - (target[:, a] - target[:, b]), gram)
    return total


def mouth_weights(vertices: torch.Tensor, mouth_points: torch.Tensor, radius: float = 2.0,
                  mouth_weight: float = 10.0) -> torch.Tensor:
    """Per-vertex loss weights ``(V,)``: ``mouth_weight`` within ``radius`` (model units) of any of the mouth points
    ``(L, 3)``, 1 elsewhere. ``vertices (V, 3)``: the neutral mesh."""
    if vertices.ndim != 2 or vertices.shape[1] != 3 or mouth_points.ndim != 2 or mouth_points.shape[1] != 3:
        raise ValueError(f"vertices (V, 3) and mouth_points (L, 3) expected, got {tuple(vertices.shape)}, "
                         f"{tuple(mouth_points.shape)}")
    d = torch.cdist(vertices.double(), mouth_points.double()).min(dim=1).values
    return torch.where(d <= radius, torch.tensor(float(mouth_weight), dtype=torch.float64),
                       torch.tensor(1.0, dtype=torch.float64)).to(vertices.dtype)


def mouth_weights_from_model(model, radius: float = 2.0, mouth_weight: float = 10.0) -> torch.Tensor:
    """:func:`mouth_weights` on a face model's neutral mesh around its iBUG-68 mouth landmarks (48-67): on ICT's
    face area (cm) a 2 cm radius covers the lips, the mouth corners and the chin's upper half."""
    with torch.no_grad():
        verts = model().vertices  # (1, V, 3)
        lm = model.get_landmarks(verts, "ibug68")[0, 48:68]
    return mouth_weights(verts[0], lm, radius, mouth_weight)


# ------------------------------------------------------------------------------------------ new target's map
def fit_identity_map(codes, expressions, weights=None, ridge: float = 1e-4) -> Tuple[torch.Tensor, torch.Tensor]:
    """Closed-form least squares for a target's affine map from the frozen shared codes of its tracked frames.

    Minimises ``sum_n w_n |W c_n + b - e_n|^2 + ridge * N * |W|^2``. Without the ridge this is also the minimiser of
    the vertex loss (any positive semi-definite vertex metric): the map is unconstrained per output.

    Args:
        codes: ``(N, C)``. expressions: ``(N, K)`` tracked blendshape weights. weights: ``(N,)`` frame weights
            (0 drops a frame), default ones. ridge: Tikhonov weight on ``W`` (relative to the frame count).

    Returns:
        ``(W (K, C), b (K,))`` in the dtype and on the device of ``codes`` (solved in float64).
    """
    c = torch.as_tensor(codes)
    e = torch.as_tensor(expressions).to(c)
    if c.ndim != 2 or e.ndim != 2 or c.shape[0] != e.shape[0]:
        raise ValueError(f"codes (N, C) and expressions (N, K) with the same N expected, got {tuple(c.shape)}, "
                         f"{tuple(e.shape)}")
    n, C = c.shape
    w = torch.ones(n, dtype=torch.float64, device=c.device) if weights is None else \
        torch.as_tensor(weights, device=c.device).double()
    if int((w > 0).sum()) < C + 1:
        raise ValueError(f"need at least {C + 1} frames with positive weight to fit a {C}-d affine map, got "
                         f"{int((w > 0).sum())}")
    X = torch.cat([c.double(), torch.ones(n, 1, dtype=torch.float64, device=c.device)], dim=1)
    Xw = X * w[:, None]
    A = X.T @ Xw
    reg = torch.full((C + 1,), ridge * float(w.sum()), dtype=torch.float64, device=c.device)
    reg[-1] = 0.0
    A = A + torch.diag(reg)
    theta = torch.linalg.solve(A, Xw.T @ e.double())  # (C + 1, K)
    return theta[:C].T.to(c.dtype), theta[C].to(c.dtype)


# ------------------------------------------------------------------------------------------------ the method
@dataclass
class NVPAudioConfig:
    """The ``nvp-audio`` method: the network's sizes, the loss weights and the optimiser (saved with every run).

    Attributes:
        feature_dim, window_steps, code_dim, filter_frames, num_expressions, num_identities: the network
            (:class:`Audio2ExpressionConfig`; ``num_identities`` = the speakers trained together).
        loss_absolute, loss_center, loss_temporal: the reference code's 1000 / 3000 / 20000 ratios: the absolute
            vertex RMS per frame ``t-1, t, t+1``, frame ``t``'s unfiltered code, each frame-difference pair.
        lr, beta1, beta2, weight_decay: Adam.
        features: ``"log_mel"`` (:func:`facerender.audio.compute_features`) or ``"phones"``; a model only takes the
            features it was trained on.
        speakers: the speakers' names, in identity order (identity ``i`` is ``speakers[i]``).
        mouth_radius, mouth_weight: the vertex weights of the loss (:func:`mouth_weights_from_model`).
    """

    feature_dim: int = 80
    window_steps: int = 16
    code_dim: int = 32
    filter_frames: int = 8
    num_expressions: int = 53
    num_identities: int = 1
    loss_absolute: float = 1.0
    loss_center: float = 3.0
    loss_temporal: float = 20.0
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    features: str = "log_mel"
    speakers: Tuple[str, ...] = ()
    mouth_radius: float = 2.0
    mouth_weight: float = 10.0

    def __post_init__(self):
        self.speakers = tuple(self.speakers)
        self.net  # noqa: B018 - validates the sizes
        if self.features not in ("log_mel", "phones") and not self.features.startswith("external"):
            raise ValueError(f"features must be 'log_mel', 'phones' or 'external:<kind>', got {self.features!r}")
        if self.speakers and len(self.speakers) != self.num_identities:
            raise ValueError(f"{len(self.speakers)} speaker names for num_identities={self.num_identities}")
        for k in ("loss_absolute", "loss_center", "loss_temporal", "weight_decay"):
            if not getattr(self, k) >= 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    @property
    def net(self) -> Audio2ExpressionConfig:
        """The network's :class:`Audio2ExpressionConfig`."""
        return Audio2ExpressionConfig(self.feature_dim, self.window_steps, self.code_dim, self.filter_frames,
                                      self.num_expressions, self.num_identities)


@register_method
class Audio2ExpressionMethod(Method):
    """Audio2ExpressionNet as a method of the shared trainer (``facerender train nvp-audio``; registered as
    ``"nvp-audio"``): one network (``"audio2expression"``), one Adam phase, the losses of the module docstring.

    A batch (from :class:`~neural_renderers.nvp.data.FrameSequenceDataset`) holds ``windows (B, S + 2, W, D)``:
    the windows of frames ``t + offsets[0] - 1 .. t + offsets[-1] + 1``, ``expression (B, 3, K)``: the tracked
    weights at ``t-1, t, t+1``, ``identity (B,)``, and optionally ``weight (B,)`` (0 drops a sample).

    Args:
        config: :class:`NVPAudioConfig`.
        basis: ``(K, V, 3)`` blendshape offsets of the loss's mesh (ICT's face area); None measures the loss on the
            blendshape weights themselves (an identity Gram matrix; for loading a trained network, or parameter-space
            training as the reference code's default).
        vertex_weights: ``(V,)`` (:func:`mouth_weights_from_model`); ones when None.
    """

    name = "nvp-audio"
    config_class = NVPAudioConfig

    def __init__(self, config: Optional[NVPAudioConfig] = None, *, basis: Optional[torch.Tensor] = None,
                 vertex_weights: Optional[torch.Tensor] = None):
        super().__init__(config or NVPAudioConfig())
        c = self.config
        self.net = Audio2ExpressionNet(c.net)
        K = c.num_expressions
        if basis is None:
            gram = torch.eye(K, dtype=torch.float64)
        else:
            if basis.ndim != 3 or basis.shape[0] != K:
                raise ValueError(f"basis must be (K={K}, V, 3), got shape {tuple(basis.shape)}")
            gram = vertex_gram(basis.double(), None if vertex_weights is None else vertex_weights.double())
        self.register_buffer("gram", gram.float())

    # ------------------------------------------------------------------------------------------- trainer API
    def networks(self) -> Dict[str, nn.Module]:
        return {"audio2expression": self.net}

    def phases(self) -> List[Phase]:
        c = self.config
        return [Phase("audio2expression", ("audio2expression",), c.lr, (c.beta1, c.beta2), c.weight_decay)]

    def forward_train(self, nets, batch: Dict[str, Any]) -> Dict[str, Any]:
        return {}

    def phase_loss(self, phase: str, nets, batch: Dict[str, Any], outputs: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        return self.losses(nets["audio2expression"], batch)

    @torch.no_grad()
    def validate(self, nets, batch: Dict[str, Any]) -> Dict[str, float]:
        """Held-out losses (vertex RMS, model units) of one batch."""
        return {k: float(v) for k, v in self.losses(nets["audio2expression"], batch).items()}

    def signature(self) -> Dict[str, Any]:
        c = self.config
        return {"feature_dim": c.feature_dim, "window_steps": c.window_steps, "code_dim": c.code_dim,
                "filter_frames": c.filter_frames, "num_expressions": c.num_expressions,
                "num_identities": c.num_identities, "features": c.features}

    # ------------------------------------------------------------------------------------------- the losses
    def predict_triplet(self, windows: torch.Tensor, identity: torch.Tensor, net: Optional[nn.Module] = None):
        """Outputs at ``t-1, t, t+1`` from ``windows (B, S + 2, W, D)``: ``(expr (B, 3, K), center (B, K))``."""
        net = self.net if net is None else net
        S = self.config.filter_frames
        if windows.ndim != 4 or windows.shape[1] != S + 2:
            raise ValueError(f"batch['windows'] must be (B, S + 2 = {S + 2}, W, D), got shape "
                             f"{tuple(windows.shape)}")
        return net(windows, identity, triplet=True)  # through the (possibly DDP-wrapped) module's forward

    def losses(self, net: nn.Module, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Scalar losses of one batch: ``absolute``, ``center``, ``temporal`` (vertex RMS, model units), ``total``."""
        windows = batch["windows"]
        target = batch["expression"].to(windows)
        identity = batch["identity"].to(windows.device)
        pred, center = self.predict_triplet(windows, identity, net)
        if "weight" in batch:
            keep = batch["weight"].to(windows.device) > 0
            pred, center, target = pred[keep], center[keep], target[keep]
        g = self.gram
        c = self.config
        absolute = sum(vertex_rms(pred[:, j] - target[:, j], g) for j in range(3))
        center_l = vertex_rms(center - target[:, 1], g)
        temporal = temporal_loss(pred, target, g)
        total = c.loss_absolute * absolute + c.loss_center * center_l + c.loss_temporal * temporal
        return {"total": total, "absolute": absolute.detach() / 3, "center": center_l.detach(),
                "temporal": temporal.detach() / 3}

    def training_step(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """:meth:`losses` of the method's own network (tests and direct use)."""
        return self.losses(self.net, batch)

    @torch.no_grad()
    def fit_new_identity(self, windows: torch.Tensor, expressions: torch.Tensor, weights=None,
                         ridge: float = 1e-4) -> int:
        """Fit and append a map for a new target from its clip (``windows (N, W, D)``, tracked ``(N, K)``) with the
        shared encoder and filter frozen; returns the new identity index."""
        codes = self.net.sequence_codes(windows)
        W, b = fit_identity_map(codes, expressions, weights, ridge)
        return self.net.maps.add_identity(W, b)
