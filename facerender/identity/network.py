"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) as a PyTorch module.

The network is ``anet_type`` of dlib's ``dnn_face_recognition_ex.cpp`` / ``tools/python/src/face_recognition.cpp``
(29 convolutions, 128-d output), run by ``dlib.face_recognition_model_v1`` on 150x150 aligned face chips::

    input_rgb_image_sized<150>           x -> (255 x - avg_rgb) / 256        (B, 3, 150, 150)
    con<32,7,7,2,2> affine relu          -> (B, 32, 72, 72)
    max_pool<3,3,2,2>                    -> (B, 32, 35, 35)          features "stem"
    alevel4: ares<32> x3                 -> (B, 32, 35, 35)          features "level4"
    alevel3: ares_down<64>, ares<64> x3  -> (B, 64, 17, 17)          features "level3"
    alevel2: ares_down<128>, ares<128> x2 -> (B, 128, 8, 8)          features "level2"
    alevel1: ares_down<256>, ares<256> x2 -> (B, 256, 4, 4)          features "level1"
    alevel0: ares_down<256>              -> (B, 256, 2, 2)           features "level0"
    avg_pool_everything, fc_no_bias<128> -> (B, 128)                 the descriptor

with ``block = affine(con3x3(relu(affine(con3x3_stride(x)))))``, ``ares = relu(x + block(x))`` and
``ares_down = relu(avg_pool2x2(x) + block_stride2(x))``. dlib adds tensors of different sizes by zero-padding the
smaller one at the end of each axis (channels, rows, columns): in ``alevel1``'s first unit the 3x3 block output
lands in the top-left corner of the 4x4 pooled shortcut, and ``alevel0``'s 1x1 block output in the top-left of 2x2.
The ``affine`` layers (frozen batch norm) are folded into the preceding convolutions when the module is built.

Same person: descriptor distance below 0.6 (dlib's threshold; 99.38 % on LFW).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError
from .dlib_format import DlibDNN, DlibLayer, DlibNetworkMismatchError, read_dlib_dnn

PathLike = Union[str, os.PathLike]

#: File name of the network inside ``face-recognition-models``.
DLIB_RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
#: Side of the aligned face chip the network takes.
CHIP_SIZE = 150
#: Descriptor length.
DESCRIPTOR_DIM = 128
#: Names of the intermediate activations :meth:`DlibFaceNet.features` returns, input side first.
FEATURE_NAMES = ("stem", "level4", "level3", "level2", "level1", "level0")

# (level name, channels, units); the first unit of every level but level4 is a strided ares_down
_LEVELS = (("level4", 32, 3, False), ("level3", 64, 4, True), ("level2", 128, 3, True), ("level1", 256, 3, True),
           ("level0", 256, 1, True))


def _expected_structure() -> Tuple[str, List[str]]:
    """The wrapper string (loss inwards) and the layer names (input outwards) of ``anet_type``."""
    outer: List[str] = ["L", "L"]  # fc_no_bias, avg_pool_everything
    names_out: List[str] = ["fc_2", "avg_pool_2"]
    block_w = ["L"] * 5
    block_n = ["affine_", "con_4", "relu_", "affine_", "con_4"]
    for _, _, units, down in reversed(_LEVELS):  # level0 is outermost
        for u in range(units - 1, -1, -1):  # the unit nearest the input is the strided one
            if down and u == 0:
                outer += ["L", "L", "L", "T", "T"] + block_w + ["T"]
                names_out += ["relu_", "add_prev_", "avg_pool_2"] + block_n
            else:
                outer += ["L", "L"] + block_w + ["T"]
                names_out += ["relu_", "add_prev_"] + block_n
    outer += ["L", "L", "L", "I"]  # max_pool, relu, affine, con (over the input)
    names_out += ["max_pool_2", "relu_", "affine_", "con_4"]
    return "".join(outer), list(reversed(names_out))


def _fold(con: DlibLayer, aff: DlibLayer) -> Tuple[np.ndarray, np.ndarray]:
    """Fold ``affine(con(x))`` (per-channel gamma, beta) into one convolution (weights, bias) in float64."""
    g = aff.tensors["gamma"].astype(np.float64).reshape(-1)
    b = aff.tensors["beta"].astype(np.float64).reshape(-1)
    w = con.tensors["filters"].astype(np.float64) * g[:, None, None, None]
    return w, con.tensors["biases"].astype(np.float64) * g + b


class _Conv(nn.Module):
    """A convolution with its folded affine; weights as frozen parameters."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, stride: int, padding: int):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weight, dtype=torch.float32), requires_grad=False)
        self.bias = nn.Parameter(torch.tensor(bias, dtype=torch.float32), requires_grad=False)
        self.stride, self.padding = int(stride), int(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        return f"{i}->{o}, {kh}x{kw}, stride={self.stride}, padding={self.padding}"


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``tt::add(dest, a, b)`` for tensors of different sizes: ``(B, C, H, W)`` with each size the larger
    of the two, each input zero-padded at the end of the channel, row and column axes."""
    C, H, W = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t):
        dc, dh, dw = C - t.shape[1], H - t.shape[2], W - t.shape[3]
        return F.pad(t, (0, dw, 0, dh, 0, dc)) if (dc or dh or dw) else t

    return pad(a) + pad(b)


class _Unit(nn.Module):
    """``ares`` (``relu(x + block(x))``) or ``ares_down`` (``relu(avg_pool2(x) + block_stride2(x))``)."""

    def __init__(self, conv1: _Conv, conv2: _Conv, down: bool):
        super().__init__()
        self.conv1, self.conv2, self.down = conv1, conv2, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_zero_padded(shortcut, y))


class DlibFaceNet(nn.Module):
    """dlib's 128-d face-recognition ResNet (see the module docstring for the layers and shapes).

    Build with :meth:`from_dlib` (the installed ``face-recognition-models`` file, or a path). Weights are frozen
    ``nn.Parameter`` s (``requires_grad=False``: the network is a fixed loss / metric; call
    ``requires_grad_(True)`` to fine-tune); ``.to(device, dtype)`` moves them (float32, float64 and bfloat16 work).

    ``forward(chips)``: ``chips`` ``(B, 3, 150, 150)`` RGB in [0, 1] (aligned as ``dlib.get_face_chip`` does; see
    :func:`facerender.identity.face_chips`) -> descriptors ``(B, 128)``. The input is cast to the network's dtype;
    it must be on the network's device. Descriptors of the same person lie within 0.6 (Euclidean).
    """

    def __init__(self, dnn: DlibDNN):
        super().__init__()
        check_face_resnet(dnn)
        inp = dnn.input[1]
        self.register_buffer("mean_rgb", torch.tensor([inp["avg_red"], inp["avg_green"], inp["avg_blue"]],
                                                      dtype=torch.float32).view(1, 3, 1, 1))
        layers = list(dnn.layers)
        pos = 0

        def take(name: str) -> DlibLayer:
            nonlocal pos
            layer = layers[pos]
            if layer.name != name:  # check_face_resnet guarantees the order; keep a clear message anyway
                raise DlibNetworkMismatchError(f"layer {pos} is {layer.name!r}, expected {name!r}")
            pos += 1
            return layer

        def conv() -> _Conv:
            c, a = take("con_4"), take("affine_")
            w, b = _fold(c, a)
            return _Conv(w, b, c.attrs["stride_y"], c.attrs["padding_y"])

        self.stem = conv()
        take("relu_")
        mp = take("max_pool_2").attrs
        self.pool = (mp["nr"], mp["stride_y"], mp["padding_y"])
        levels = []
        for name, _, units, down in _LEVELS:
            mods = []
            for u in range(units):
                c1 = conv()
                take("relu_")
                c2 = conv()
                strided = down and u == 0
                if strided:
                    take("avg_pool_2")
                take("add_prev_")
                take("relu_")
                mods.append(_Unit(c1, c2, strided))
            levels.append((name, nn.Sequential(*mods)))
        self.levels = nn.ModuleDict(levels)
        take("avg_pool_2")
        fc = take("fc_2")
        self.fc = nn.Parameter(torch.tensor(fc.tensors["weights"], dtype=torch.float32), requires_grad=False)
        self.source = str(dnn.path) if dnn.path is not None else None

    # ----------------------------------------------------------------------------------------------------
    @classmethod
    def from_dlib(cls, path: Optional[PathLike] = None, *, device=None, dtype: torch.dtype = torch.float32
                  ) -> "DlibFaceNet":
        """Load the network from dlib's ``.dat`` file.

        Args:
            path: the file; default ``dlib_face_recognition_resnet_model_v1.dat`` from the installed
                ``face-recognition-models`` package (located without importing it).
            device, dtype: where to put the weights (float32 default; float64 and bfloat16 work).
        Raises:
            BackendUnavailableError: ``face-recognition-models`` is not installed (names the package to install).
            ModelFileError (DlibFormatError): the file is missing, empty, truncated or corrupt (names the file and
                the package to reinstall).
            DlibNetworkMismatchError: the file holds another dlib network (names what was found).
        """
        return cls(_load_dnn(path)).to(device=device, dtype=dtype)

    @property
    def device(self) -> torch.device:
        return self.fc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.dtype

    def _prepare(self, chips: torch.Tensor) -> torch.Tensor:
        if not isinstance(chips, torch.Tensor):
            raise TypeError(f"chips must be a torch.Tensor (B, 3, {CHIP_SIZE}, {CHIP_SIZE}), "
                            f"got {type(chips).__name__}")
        if chips.ndim != 4 or chips.shape[1] != 3 or chips.shape[2:] != (CHIP_SIZE, CHIP_SIZE):
            raise ShapeError(f"chips must be (B, 3, {CHIP_SIZE}, {CHIP_SIZE}) RGB in [0, 1], got shape "
                             f"{tuple(chips.shape)}")
        if not chips.is_floating_point():
            raise ShapeError(f"chips must be a floating-point tensor in [0, 1], got dtype {chips.dtype}")
        if chips.device != self.device:
            raise ShapeError(f"chips are on {chips.device} but the network is on {self.device}; move one of them")
        x = chips.to(self.dtype)
        return (x * 255.0 - self.mean_rgb.to(self.dtype)) / 256.0

    def _trunk(self, x: torch.Tensor, want: Sequence[str] = (), stop: Optional[str] = None
               ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Run the stem and the levels (up to ``stop``), keeping the activations named in ``want``."""
        feats: Dict[str, torch.Tensor] = {}
        k, s, p = self.pool
        x = F.max_pool2d(F.relu(self.stem(x)), k, s, p)
        if "stem" in want:
            feats["stem"] = x
        if stop == "stem":
            return x, feats
        for name, level in self.levels.items():
            x = level(x)
            if name in want:
                feats[name] = x
            if name == stop:
                break
        return x, feats

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 150, 150)`` chips in [0, 1] -> ``(B, 128)`` descriptors (network dtype)."""
        x, _ = self._trunk(self._prepare(chips))
        return x.mean(dim=(2, 3)) @ self.fc

    def features(self, chips: torch.Tensor, names: Sequence[str] = FEATURE_NAMES) -> Dict[str, torch.Tensor]:
        """Intermediate activations (after each level's last ReLU) for a feature / perceptual loss.

        Args:
            chips: ``(B, 3, 150, 150)`` in [0, 1].
            names: any of ``"stem"`` (32 x 35 x 35, after the max pool), ``"level4"`` (32 x 35 x 35),
                ``"level3"`` (64 x 17 x 17), ``"level2"`` (128 x 8 x 8), ``"level1"`` (256 x 4 x 4),
                ``"level0"`` (256 x 2 x 2) and ``"descriptor"`` (128).
        Returns:
            ``{name: (B, C, H, W)}`` (``"descriptor"``: ``(B, 128)``); only the layers up to the deepest requested
            one are evaluated.
        """
        names = list(names)
        bad = [n for n in names if n not in FEATURE_NAMES + ("descriptor",)]
        if bad or not names:
            raise ValueError(f"feature names must be a non-empty subset of {FEATURE_NAMES + ('descriptor',)}, "
                             f"got {names}")
        x = self._prepare(chips)
        if "descriptor" in names:
            x, feats = self._trunk(x, names)
            feats["descriptor"] = x.mean(dim=(2, 3)) @ self.fc
        else:
            deepest = max(names, key=FEATURE_NAMES.index)
            _, feats = self._trunk(x, names, stop=deepest)
        return {n: feats[n] for n in names}

    def extra_repr(self) -> str:
        return f"source={self.source!r}" if self.source else ""


# ----------------------------------------------------------------------------------------------------------
# loading and checking


def check_face_resnet(dnn: DlibDNN) -> None:
    """Raise :class:`DlibNetworkMismatchError` unless ``dnn`` is dlib's face-recognition ResNet (``anet_type``)."""
    src = str(dnn.path) if dnn.path is not None else "the network"
    structure, names = _expected_structure()
    found = [layer.name for layer in dnn.layers]
    expect = (f"dlib's face recognition ResNet (loss_metric, input_rgb_image_sized<150>, {names.count('con_4')} "
              f"con_4, {names.count('affine_')} affine_, {names.count('add_prev_')} add_prev_, fc_2 -> "
              f"{DESCRIPTOR_DIM})")
    if not dnn.loss[0].startswith("loss_metric"):
        raise DlibNetworkMismatchError(f"{src}: holds {dnn.summary()}; expected {expect}")
    if dnn.input[0] != "input_rgb_image_sized" or (dnn.input[1].get("nr"), dnn.input[1].get("nc")) != (
            CHIP_SIZE, CHIP_SIZE):
        raise DlibNetworkMismatchError(f"{src}: input layer {dnn.input[0]!r} {dnn.input[1]}; expected "
                                       f"input_rgb_image_sized of {CHIP_SIZE}x{CHIP_SIZE}: {expect}")
    if dnn.structure != structure or found != names:
        i = next((k for k, (a, b) in enumerate(zip(found, names)) if a != b), min(len(found), len(names)))
        where = (f"layer {i} from the input is {found[i]!r} where the ResNet has {names[i]!r}"
                 if i < min(len(found), len(names)) else f"{len(found)} layers where the ResNet has {len(names)}")
        raise DlibNetworkMismatchError(f"{src}: holds {dnn.summary()}; {where}; expected {expect}")
    # channel counts and strides, level by level
    cons = [layer for layer in dnn.layers if layer.kind == "con"]
    want = [(32, 3, 7, 2)]
    for _, ch, units, down in _LEVELS:
        prev = want[-1][0]
        for u in range(units):
            stride = 2 if (down and u == 0) else 1
            want += [(ch, prev, 3, stride), (ch, ch, 3, 1)]
            prev = ch
    for k, (layer, (nf, cin, ks, st)) in enumerate(zip(cons, want)):
        a = layer.attrs
        got = (a["num_filters"], a["in_channels"], a["nr"], a["stride_y"])
        if got != (nf, cin, ks, st) or a["nc"] != ks or a["stride_x"] != st or a["padding_y"] != a["padding_x"]:
            raise DlibNetworkMismatchError(
                f"{src}: convolution {k} has (filters, inputs, size, stride) {got}, padding "
                f"({a['padding_y']}, {a['padding_x']}); the face ResNet has {(nf, cin, ks, st)}")
    fc = dnn.layers[-1]
    if (fc.attrs["num_inputs"], fc.attrs["num_outputs"], fc.attrs["bias"]) != (256, DESCRIPTOR_DIM, False):
        raise DlibNetworkMismatchError(f"{src}: the last layer maps {fc.attrs['num_inputs']} -> "
                                       f"{fc.attrs['num_outputs']} (bias {fc.attrs['bias']}); expected fc_no_bias "
                                       f"256 -> {DESCRIPTOR_DIM}")


def default_model_path() -> Path:
    """``dlib_face_recognition_resnet_model_v1.dat`` inside the installed ``face-recognition-models`` package.

    Raises:
        BackendUnavailableError: the package is not installed, or the file is missing from it (names the
            package to install).
    """
    from ..landmarks.detect import dlib_model_path

    return dlib_model_path(DLIB_RECOGNITION_FILE)


_CACHE: Dict[Tuple[str, int, int], DlibDNN] = {}
_LOCK = threading.Lock()


def _load_dnn(path: Optional[PathLike]) -> DlibDNN:
    from .dlib_format import DlibFormatError

    p = Path(path) if path is not None else default_model_path()
    if not p.is_file():
        raise FileNotFoundError(f"dlib face recognition model not found: {str(p)!r} (it ships with "
                                'face-recognition-models: pip install "facerender[landmarks]")')
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _LOCK:
        dnn = _CACHE.get(key)
    if dnn is None:
        try:
            dnn = read_dlib_dnn(p)
        except DlibFormatError as e:
            raise DlibFormatError(f"{e}; if this is the file from face-recognition-models, reinstall it: "
                                  "pip install --force-reinstall face-recognition-models") from None
        with _LOCK:
            _CACHE.clear()
            _CACHE[key] = dnn
    return dnn


__all__ = ["CHIP_SIZE", "DESCRIPTOR_DIM", "DLIB_RECOGNITION_FILE", "DlibFaceNet", "FEATURE_NAMES",
           "add_zero_padded", "check_face_resnet", "default_model_path"]
