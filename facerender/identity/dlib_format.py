"""Reader of dlib's DNN serialization format (``dlib::serialize(net)`` / ``deserialize``), in pure Python + NumPy.

The format, as read from dlib's own source (``dlib/serialize.h``, ``dlib/dnn/core.h``, ``dlib/dnn/tensor.h``,
``dlib/dnn/layers.h``, ``dlib/dnn/input.h``, ``dlib/dnn/loss.h``; see ``docs/identity.md`` for the versions):

* **integers**: one control byte (bit 7: negative, bits 0-3: number of bytes), then ``|value|`` little-endian in
  that many bytes.
* **bool**: the ASCII character ``'1'`` or ``'0'``.
* **float / double** (``float_details``): the mantissa (int64) then the exponent (int16), both as integers:
  ``value = mantissa * 2**exponent`` (the exponents 32000 / 32001 / 32002 mark +inf / -inf / NaN).
* **string**: its length as an integer, then the bytes.
* **tensor** (``resizable_tensor``, version 2): version, ``num_samples, k, nr, nc``, then the values as 4-byte
  little-endian IEEE floats in ``(n, k, r, c)`` row-major order. **alias_tensor** (version 1): the four sizes.
* **network**: ``add_loss_layer`` writes its version (1), the loss details, then its sub-network. Every
  ``add_layer`` writes its version (2; 3 when its sub-network is the input layer), then its sub-network FIRST, then
  its own layer details and bookkeeping (three bools and two to three tensors, plus the sample-expansion factor
  in the input case). ``add_tag_layer`` / ``add_skip_layer`` write their version (1) and their sub-network only:
  tag and skip ids are not stored, so the topology (which tag an ``add_prev`` adds) comes from the network type
  that reads the file, as in C++.

:func:`read_dlib_dnn` therefore returns the wrapper sequence (``"L"`` computational layer, ``"T"`` tag or skip,
``"I"`` the layer over the input, from the loss inwards) and the layers from the input outwards;
:mod:`facerender.identity.network` checks them against the face-recognition ResNet's definition.
Supported layer details: ``con_4``, ``affine_`` (also ``bn_con2`` / ``bn_fc2``, converted to affine as dlib does),
``relu_``, ``max_pool_2``, ``avg_pool_2``, ``add_prev_``, ``fc_2``; inputs ``input_rgb_image_sized`` and
``input_rgb_image``; losses ``loss_metric_`` / ``loss_metric_2``. Anything else is refused with the name found.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import ModelFileError

PathLike = Union[str, os.PathLike]

_INF_EXP, _NINF_EXP, _NAN_EXP = 32000, 32001, 32002


class DlibFormatError(ModelFileError):
    """A file is not in dlib's DNN serialization format, is truncated, or holds a layer this reader does not know.

    The message names the file, the byte offset and what was found there.
    """


class DlibNetworkMismatchError(ModelFileError):
    """A valid dlib DNN file holds another network than the one requested (the message says what was found)."""


@dataclass
class DlibLayer:
    """One computational layer read from a dlib DNN file.

    Attributes:
        name: the serialized version string (``"con_4"``, ``"affine_"``, ``"relu_"`` ...).
        kind: ``"con"``, ``"affine"``, ``"relu"``, ``"max_pool"``, ``"avg_pool"``, ``"add_prev"``, ``"fc"``.
        attrs: the layer's settings (sizes, strides, paddings, modes; see each reader).
        tensors: the layer's parameters as float32 arrays (``filters (N, K, R, C)``, ``biases (N,)``,
            ``gamma (K,)``, ``beta (K,)``, ``weights (in, out)``).
        offset: byte offset of the layer details in the file.
    """

    name: str
    kind: str
    attrs: Dict[str, object] = field(default_factory=dict)
    tensors: Dict[str, np.ndarray] = field(default_factory=dict)
    offset: int = 0


@dataclass
class DlibDNN:
    """A parsed dlib DNN file.

    Attributes:
        path: the file.
        loss: ``(name, settings)`` of the loss layer (``("loss_metric_2", {"margin": .., "dist_thresh": ..})``).
        input: ``(name, settings)`` of the input layer (``("input_rgb_image_sized", {"avg_red": .., "nr": 150 ..})``).
        structure: wrapper sequence from the loss inwards: ``"L"`` computational layer, ``"T"`` tag or skip layer,
            ``"I"`` the computational layer directly over the input.
        layers: the computational layers from the input outwards (``len(layers) == structure.count("L") + 1``).
    """

    path: Optional[Path]
    loss: Tuple[str, Dict[str, float]]
    input: Tuple[str, Dict[str, float]]
    structure: str
    layers: List[DlibLayer]

    def summary(self) -> str:
        """A one-line description: loss, input, the number of each layer kind."""
        counts: Dict[str, int] = {}
        for layer in self.layers:
            counts[layer.name] = counts.get(layer.name, 0) + 1
        kinds = ", ".join(f"{n} x{c}" for n, c in counts.items())
        return f"loss {self.loss[0]!r}, input {self.input[0]!r}, {len(self.layers)} layers ({kinds})"


class _Reader:
    """Sequential reader of dlib's primitive encodings over a bytes buffer (errors name the file and offset)."""

    def __init__(self, data: bytes, source: str):
        self.data = data
        self.pos = 0
        self.source = source

    def fail(self, what: str, at: Optional[int] = None) -> DlibFormatError:
        at = self.pos if at is None else at
        return DlibFormatError(f"{self.source}: {what} at byte {at} of {len(self.data)} "
                               "(not a dlib DNN file, or a truncated / corrupt one)")

    def _take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"file ends while reading {what} ({n} bytes needed, {len(self.data) - self.pos} left)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self, what: str = "an integer") -> int:
        start = self.pos
        ctrl = self._take(1, what)[0]
        n = ctrl & 0x0F
        if ctrl & 0x70 or n > 8:
            raise self.fail(f"bad integer control byte 0x{ctrl:02x} while reading {what}", start)
        v = int.from_bytes(self._take(n, what), "little")
        return -v if ctrl & 0x80 else v

    def float(self, what: str = "a float") -> float:
        start = self.pos
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail(f"old ASCII float encoding (unsupported) while reading {what}", start)
        m = self.int(what)
        e = self.int(what)
        if e == _INF_EXP:
            return float("inf")
        if e == _NINF_EXP:
            return float("-inf")
        if e == _NAN_EXP:
            return float("nan")
        if abs(e) > 2000:
            raise self.fail(f"exponent {e} out of range while reading {what}", start)
        return float(m) * 2.0 ** e

    def bool(self, what: str = "a bool") -> bool:
        start = self.pos
        c = self._take(1, what)
        if c not in (b"0", b"1"):
            raise self.fail(f"expected a bool ('0' or '1') for {what}, found byte 0x{c[0]:02x}", start)
        return c == b"1"

    def string(self, what: str = "a string", max_len: int = 256) -> str:
        start = self.pos
        n = self.int(what)
        if not 0 <= n <= max_len:
            raise self.fail(f"implausible string length {n} while reading {what}", start)
        raw = self._take(n, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"non-ASCII bytes where {what} was expected", start) from None

    def peek_string(self) -> Optional[str]:
        """The string at the current position if one plausibly starts there (position unchanged), else None."""
        save = self.pos
        try:
            s = self.string(max_len=64)
        except DlibFormatError:
            s = None
        self.pos = save
        if s and all(ch.isalnum() or ch == "_" for ch in s):
            return s
        return None

    def tensor(self, what: str) -> np.ndarray:
        start = self.pos
        version = self.int(what)
        if version != 2:
            raise self.fail(f"tensor version {version} (only version 2, 4-byte floats, is read) for {what}", start)
        shape = tuple(self.int(what) for _ in range(4))
        if any(s < 0 for s in shape):
            raise self.fail(f"negative tensor size {shape} for {what}", start)
        count = int(np.prod(shape, dtype=np.int64))
        raw = self._take(4 * count, f"{what} values {shape}")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self, what: str) -> Tuple[int, int, int, int]:
        start = self.pos
        version = self.int(what)
        if version != 1:
            raise self.fail(f"alias_tensor version {version} (expected 1) for {what}", start)
        return tuple(self.int(what) for _ in range(4))  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------------------
# layer details


def _read_con(r: _Reader, name: str) -> DlibLayer:
    params = r.tensor("con_ params")
    a = {k: r.int(f"con_ {k}") for k in ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y",
                                          "padding_x")}
    filt = r.alias("con_ filters")
    bias = r.alias("con_ biases")
    for k in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_learning_rate_multiplier",
              "bias_weight_decay_multiplier"):
        a[k] = r.float(f"con_ {k}")
    flat = params.reshape(-1)
    nf = int(np.prod(filt))
    if filt[0] != a["num_filters"] or filt[2:] != (a["nr"], a["nc"]) or nf + bias[1] != flat.size:
        raise r.fail(f"con_ layer inconsistent: filters {filt}, biases {bias}, {flat.size} parameters, "
                     f"num_filters {a['num_filters']}")
    a["in_channels"] = filt[1]
    tensors = {"filters": flat[:nf].reshape(filt).copy(), "biases": flat[nf:nf + bias[1]].copy()}
    return DlibLayer(name, "con", a, tensors)


def _read_affine(r: _Reader, name: str) -> DlibLayer:
    params = r.tensor("affine_ params").reshape(-1)
    g = r.alias("affine_ gamma")
    b = r.alias("affine_ beta")
    mode = r.int("affine_ mode")
    ng = int(np.prod(g))
    if ng + int(np.prod(b)) != params.size:
        raise r.fail(f"affine_ layer inconsistent: gamma {g}, beta {b}, {params.size} parameters")
    shape = g[1:] if mode == 1 else (g[1],)
    return DlibLayer(name, "affine", {"mode": "fc" if mode == 1 else "conv", "channels": g[1]},
                     {"gamma": params[:ng].reshape(shape).copy(), "beta": params[ng:].reshape(shape).copy()})


def _read_bn(r: _Reader, name: str) -> DlibLayer:
    """``bn_con2`` / ``bn_fc2``: converted to an affine layer as ``affine_(const bn_&)`` does:
    ``gamma' = gamma / sqrt(running_var + eps)``, ``beta' = beta - gamma' * running_mean``."""
    params = r.tensor("bn_ params").reshape(-1)
    g = r.alias("bn_ gamma")
    r.alias("bn_ beta")
    r.tensor("bn_ means")
    r.tensor("bn_ invstds")
    rm = r.tensor("bn_ running_means").reshape(-1)
    rv = r.tensor("bn_ running_variances").reshape(-1)
    r.int("bn_ num_updates")
    r.int("bn_ running_stats_window_size")
    for _ in range(4):
        r.float("bn_ multipliers")
    eps = r.float("bn_ eps")
    ng = int(np.prod(g))
    gamma = params[:ng].astype(np.float64) / np.sqrt(rv.astype(np.float64) + eps)
    beta = params[ng:2 * ng].astype(np.float64) - gamma * rm
    fc = name == "bn_fc2"
    shape = g[1:] if fc else (g[1],)
    return DlibLayer(name, "affine", {"mode": "fc" if fc else "conv", "channels": g[1], "from_bn": True,
                                      "eps": eps},
                     {"gamma": gamma.astype(np.float32).reshape(shape), "beta": beta.astype(np.float32).reshape(shape)})


def _read_pool(r: _Reader, name: str) -> DlibLayer:
    a = {k: r.int(f"{name} {k}") for k in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")}
    return DlibLayer(name, "max_pool" if name.startswith("max") else "avg_pool", a)


def _read_fc(r: _Reader, name: str) -> DlibLayer:
    n_out = r.int("fc_ num_outputs")
    n_in = r.int("fc_ num_inputs")
    params = r.tensor("fc_ params").reshape(-1)
    w = r.alias("fc_ weights")
    b = r.alias("fc_ biases")
    mode = r.int("fc_ bias_mode")
    mults = [r.float("fc_ multipliers") for _ in range(4)]
    nw = int(np.prod(w))
    if w[:2] != (n_in, n_out) or nw + int(np.prod(b)) != params.size:
        raise r.fail(f"fc_ layer inconsistent: {n_in} -> {n_out}, weights {w}, biases {b}, {params.size} parameters")
    t = {"weights": params[:nw].reshape(n_in, n_out).copy()}
    if mode == 0:
        t["biases"] = params[nw:nw + n_out].copy()
    return DlibLayer(name, "fc", {"num_outputs": n_out, "num_inputs": n_in, "bias": mode == 0,
                                  "learning_rate_multiplier": mults[0]}, t)


_LAYER_READERS = {
    "con_4": _read_con,
    "affine_": _read_affine,
    "bn_con2": _read_bn,
    "bn_fc2": _read_bn,
    "relu_": lambda r, n: DlibLayer(n, "relu"),
    "max_pool_2": _read_pool,
    "avg_pool_2": _read_pool,
    "add_prev_": lambda r, n: DlibLayer(n, "add_prev"),
    "fc_2": _read_fc,
}


def _read_input(r: _Reader) -> Tuple[str, Dict[str, float]]:
    at = r.pos
    name = r.string("the input layer's name")
    if name == "input_rgb_image_sized":
        a = {k: r.float(k) for k in ("avg_red", "avg_green", "avg_blue")}
        a["nr"] = r.int("nr")
        a["nc"] = r.int("nc")
        return name, a
    if name == "input_rgb_image":
        return name, {k: r.float(k) for k in ("avg_red", "avg_green", "avg_blue")}
    raise r.fail(f"input layer {name!r} is not supported (known: input_rgb_image_sized, input_rgb_image)", at)


def _read_loss(r: _Reader) -> Tuple[str, Dict[str, float]]:
    at = r.pos
    name = r.peek_string()
    if name is None:
        raise r.fail("no loss layer name where a dlib DNN file starts")
    r.string()
    if name == "loss_metric_2":
        return name, {"margin": r.float("margin"), "dist_thresh": r.float("dist_thresh")}
    if name == "loss_metric_":
        return name, {"margin": 0.1, "dist_thresh": 0.75}
    raise DlibNetworkMismatchError(
        f"{r.source}: a dlib DNN with the loss layer {name!r} (byte {at}); this reader handles metric-learning "
        "networks (loss_metric_ / loss_metric_2), such as dlib's face recognition ResNet")


def parse_dlib_dnn(data: bytes, source: str = "<bytes>") -> DlibDNN:
    """Parse a dlib DNN held in ``data`` (see :func:`read_dlib_dnn`)."""
    r = _Reader(data, source)
    version = r.int("the add_loss_layer version")
    if version != 1:
        raise r.fail(f"add_loss_layer version {version} (expected 1)", 0)
    loss = _read_loss(r)
    structure = []
    while True:
        at = r.pos
        v = r.int("a layer version")
        if v in (2, 3) and (r.peek_string() or "").startswith("input"):
            structure.append("I")  # add_layer over the input layer (version 3, or 2 in older files)
            input_version = v
            break
        if v == 2:
            structure.append("L")
        elif v == 1:
            structure.append("T")
        else:
            raise r.fail(f"unexpected layer version {v}", at)
        if len(structure) > 10_000:
            raise r.fail("more than 10,000 nested layers")
    inp = _read_input(r)
    layers: List[DlibLayer] = []
    for kind in reversed(structure):
        if kind == "T":
            continue
        at = r.pos
        name = r.string("a layer name")
        reader = _LAYER_READERS.get(name)
        if reader is None:
            raise DlibNetworkMismatchError(
                f"{source}: layer {len(layers)} (from the input) is {name!r} at byte {at}; this reader knows "
                f"{', '.join(sorted(_LAYER_READERS))}")
        layer = reader(r, name)
        layer.offset = at
        # add_layer bookkeeping: this_layer_setup_called, gradient_input_is_stale,
        # get_output_and_gradient_input_disabled, x_grad, cached_output, then params_grad (add_layer v2) or
        # grad_final [+ _sample_expansion_factor] (the input case, v2 / v3)
        for what in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
            r.bool(what)
        r.tensor("x_grad")
        r.tensor("cached_output")
        if kind == "L":
            r.tensor("params_grad")
        else:
            r.tensor("grad_final")
            if input_version >= 3:
                r.int("_sample_expansion_factor")
        layers.append(layer)
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} bytes left after the network")
    return DlibDNN(path=None, loss=loss, input=inp, structure="".join(structure), layers=layers)


def read_dlib_dnn(path: PathLike) -> DlibDNN:
    """Read a dlib DNN file (e.g. ``dlib_face_recognition_resnet_model_v1.dat``).

    Returns:
        :class:`DlibDNN` (loss, input, wrapper structure, layers with float32 parameters).
    Raises:
        FileNotFoundError: no such file.
        DlibFormatError: not a dlib DNN file, truncated or corrupt (names the file and byte offset).
        DlibNetworkMismatchError: a dlib DNN with a loss or layer type this reader does not handle (names it).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"dlib DNN file not found: {str(p)!r}")
    data = p.read_bytes()
    if not data:
        raise DlibFormatError(f"{str(p)!r} is empty (0 bytes); reinstall the package that ships it")
    net = parse_dlib_dnn(data, repr(str(p)))
    net.path = p
    return net


__all__ = ["DlibDNN", "DlibFormatError", "DlibLayer", "DlibNetworkMismatchError", "parse_dlib_dnn", "read_dlib_dnn"]
