"""Blendshape rigs: named delta shapes with value ranges, left/right groups and a FACS action-unit mapping."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Tuple

import torch

from .errors import ShapeError

# ICT-FaceKit README, "Our expression shapes closest relation to FACS units". AU30 appears twice (left/right);
# we name them AU30L / AU30R.
ICT_FACS_TABLE: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "AU1": ("Inner brow raiser", ("browInnerUp_L", "browInnerUp_R")),
    "AU2": ("Outer brow raiser", ("browOuterUp_L", "browOuterUp_R")),
    "AU4": ("Brow lowerer", ("browDown_L", "browDown_R")),
    "AU5": ("Upper lid raiser", ("eyeWide_L", "eyeWide_R")),
    "AU6": ("Cheek raiser", ("cheekSquint_L", "cheekSquint_R")),
    "AU7": ("Lid tightener", ("eyeSquint_L", "eyeSquint_R")),
    "AU9": ("Nose wrinkler", ("noseSneer_L", "noseSneer_R")),
    "AU10": ("Upper lip raiser", ("mouthShrugUpper",)),
    "AU11": ("Nasolabial deepener", ("mouthUpperUp_L", "mouthUpperUp_R")),
    "AU12": ("Lip corner puller", ("mouthSmile_L", "mouthSmile_R")),
    "AU14": ("Dimpler", ("mouthDimple_L", "mouthDimple_R")),
    "AU15": ("Lip corner depressor", ("mouthFrown_L", "mouthFrown_R")),
    "AU16": ("Lower lip depressor", ("mouthLowerDown_L", "mouthLowerDown_R")),
    "AU17": ("Chin raiser", ("mouthShrugLower",)),
    "AU18": ("Lip pucker", ("mouthPucker",)),
    "AU20": ("Lip stretcher", ("mouthStretch_L", "mouthStretch_R")),
    "AU22": ("Lip funneler", ("mouthFunnel",)),
    "AU24": ("Lip pressor", ("mouthPress_L", "mouthPress_R")),
    "AU27": ("Mouth stretch", ("jawOpen",)),
    "AU28": ("Lip suck", ("mouthRollLower", "mouthRollUpper")),
    "AU29": ("Jaw thrust", ("jawForward",)),
    "AU30L": ("Jaw sideways (left)", ("jawLeft",)),
    "AU30R": ("Jaw sideways (right)", ("jawRight",)),
    "AU33": ("Cheek blow", ("cheekPuff_L", "cheekPuff_R")),
    "AU45": ("Blink", ("eyeBlink_L", "eyeBlink_R")),
    "AU61": ("Eyes turn left", ("eyeLookOut_L", "eyeLookIn_R")),
    "AU62": ("Eyes turn right", ("eyeLookOut_R", "eyeLookIn_L")),
    "AU63": ("Eyes up", ("eyeLookUp_L", "eyeLookUp_R")),
    "AU64": ("Eyes down", ("eyeLookDown_L", "eyeLookDown_R")),
}


def _side(name: str) -> str:
    """"left"/"right" for ``*_L``/``*_R`` shapes (the subject's side), else "center".

    ``jawLeft``/``mouthLeft`` move the midline sideways: they are "center" shapes (but mirror into each other).
    """
    if name.endswith("_L"):
        return "left"
    if name.endswith("_R"):
        return "right"
    return "center"


def _mirror_name(name: str) -> str:
    if name.endswith("_L"):
        return name[:-2] + "_R"
    if name.endswith("_R"):
        return name[:-2] + "_L"
    for a, b in (("Left", "Right"), ("Right", "Left")):
        if name.endswith(a):
            return name[: -len(a)] + b
    return name


@dataclass
class BlendshapeRig:
    """Named delta blendshapes ``deltas (K, V, 3)`` with value ranges and metadata.

    ``vertices = neutral + sum_k w_k * deltas[k]`` with ``lower[k] <= w_k <= upper[k]``.

    Attributes:
        names: the K blendshape names (ARKit style, ``_L``/``_R`` for the subject's left/right).
        deltas: ``(K, V, 3)`` tensor (a view of the model's expression basis when built from a model).
        lower, upper: ``(K,)`` value ranges.
        facs: ``{AU: (description, (names...))}`` restricted to the names present.
    """

    names: Tuple[str, ...]
    deltas: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    facs: Dict[str, Tuple[str, Tuple[str, ...]]] = field(default_factory=dict)

    def __post_init__(self):
        K = len(self.names)
        if self.deltas.ndim != 3 or self.deltas.shape[0] != K or self.deltas.shape[2] != 3:
            raise ShapeError(f"deltas must be ({K}, V, 3) for {K} names, got {tuple(self.deltas.shape)}")
        if not self.facs:
            present = set(self.names)
            self.facs = {au: (d, tuple(n for n in shapes if n in present))
                         for au, (d, shapes) in ICT_FACS_TABLE.items() if all(n in present for n in shapes)}

    @classmethod
    def from_model(cls, model) -> "BlendshapeRig":
        """The expression set of a :class:`~morphable_models.linear.LinearFaceModel`."""
        return cls(tuple(model.expression_names), model.expression_basis_3d(), model.expression_lower,
                   model.expression_upper)

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no blendshape {name!r}; available: {', '.join(self.names)}") from None

    # -------------------------------------------------------------------------------------------- groups
    @property
    def groups(self) -> Dict[str, List[str]]:
        """``{"left": [...], "right": [...], "center": [...]}`` (subject's left/right)."""
        out: Dict[str, List[str]] = {"left": [], "right": [], "center": []}
        for n in self.names:
            out[_side(n)].append(n)
        return out

    @property
    def left_right_pairs(self) -> List[Tuple[str, str]]:
        """Pairs ``(name_L, name_R)`` present in the rig."""
        present = set(self.names)
        return [(n, _mirror_name(n)) for n in self.names if _side(n) == "left" and _mirror_name(n) in present]

    def mirror_permutation(self) -> torch.Tensor:
        """``(K,)`` index such that ``w[:, perm]`` swaps left and right weights."""
        return torch.as_tensor([self.names.index(_mirror_name(n)) if _mirror_name(n) in self.names else i
                                for i, n in enumerate(self.names)], dtype=torch.long)

    # -------------------------------------------------------------------------------------------- weights
    def weights(self, values: Mapping[str, float], batch_size: int = 1) -> torch.Tensor:
        """A ``(B, K)`` weight tensor from ``{name: value}`` (others 0); values outside the range raise."""
        w = torch.zeros(batch_size, len(self.names), dtype=self.deltas.dtype, device=self.deltas.device)
        for n, v in values.items():
            k = self.index(n)
            lo, hi = float(self.lower[k]), float(self.upper[k])
            if not (lo - 1e-9 <= float(v) <= hi + 1e-9):
                raise ShapeError(f"blendshape {n!r} = {v} is outside its range [{lo}, {hi}]")
            w[:, k] = float(v)
        return w

    def clamp(self, w: torch.Tensor) -> torch.Tensor:
        """Clamp ``(B, K)`` weights to the value ranges (returns a new tensor)."""
        return torch.maximum(torch.minimum(w, self.upper.to(w)), self.lower.to(w))

    def au_to_weights(self, aus: Mapping[str, float], batch_size: int = 1) -> torch.Tensor:
        """FACS action-unit intensities in [0, 1] -> ``(B, K)`` weights (each AU drives its shapes equally)."""
        w = torch.zeros(batch_size, len(self.names), dtype=self.deltas.dtype, device=self.deltas.device)
        for au, v in aus.items():
            if au not in self.facs:
                raise KeyError(f"unknown action unit {au!r}; known: {', '.join(self.facs)}")
            for n in self.facs[au][1]:
                w[:, self.index(n)] = float(v)
        return w

    def weights_to_au(self, w: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``(B, K)`` weights -> ``{AU: (B,)}`` intensities (the mean of the AU's shapes)."""
        if w.ndim != 2 or w.shape[1] != len(self.names):
            raise ShapeError(f"weights must be (B, {len(self.names)}), got {tuple(w.shape)}")
        return {au: w[:, [self.index(n) for n in shapes]].mean(1) for au, (_, shapes) in self.facs.items()}

    def apply(self, neutral: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``neutral (V, 3) or (B, V, 3)`` + weighted deltas -> ``(B, V, 3)``."""
        from .linear import linear_blend

        return linear_blend(neutral, self.deltas, w)
