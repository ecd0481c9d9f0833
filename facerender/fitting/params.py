"""Named parameter blocks of a face fit, packed into the flat vector the solver sees (no magic slices)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

from ..errors import ShapeError

INF = float("inf")


@dataclass(frozen=True)
class Block:
    """A named block of ``size`` parameters with scalar bounds (``-inf``/``inf`` for none)."""

    name: str
    size: int
    lower: float = -INF
    upper: float = INF


class ParameterLayout:
    """An ordered set of :class:`Block` s: ``split`` a flat ``(B, P)`` vector into named ``(B, size)`` views and back.

    Blocks not in the layout are *fixed*: :meth:`split` fills them from ``fixed`` (a dict of ``(B, size)`` tensors).
    """

    def __init__(self, blocks: Sequence[Block]):
        names = [b.name for b in blocks]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate block names in {names}")
        self.blocks: Tuple[Block, ...] = tuple(b for b in blocks if b.size > 0)
        self.slices: Dict[str, slice] = {}
        k = 0
        for b in self.blocks:
            self.slices[b.name] = slice(k, k + b.size)
            k += b.size
        self.P = k

    def __contains__(self, name: str) -> bool:
        return name in self.slices

    def __repr__(self) -> str:
        return "ParameterLayout(" + ", ".join(f"{b.name}={b.size}" for b in self.blocks) + ")"

    def split(self, x: torch.Tensor, fixed: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        if x.ndim != 2 or x.shape[1] != self.P:
            raise ShapeError(f"parameter vector must be (B, {self.P}) for {self}, got {tuple(x.shape)}")
        out = dict(fixed or {})
        for name, s in self.slices.items():
            out[name] = x[:, s]
        return out

    def join(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = [b.name for b in self.blocks if b.name not in values]
        if missing:
            raise KeyError(f"missing parameter blocks {missing} for {self}")
        parts = []
        for b in self.blocks:
            v = values[b.name]
            if v.ndim != 2 or v.shape[1] != b.size:
                raise ShapeError(f"block {b.name!r} must be (B, {b.size}), got {tuple(v.shape)}")
            parts.append(v)
        return torch.cat(parts, 1)

    def bounds(self, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper bounds ``(P,)`` with the dtype/device of ``like``."""
        lo_hi = [[b.lower for b in self.blocks for _ in range(b.size)],
                 [b.upper for b in self.blocks for _ in range(b.size)]]
        out = torch.tensor(lo_hi, dtype=like.dtype, device=like.device).reshape(2, self.P)
        return out[0].clone(), out[1].clone()


def model_bounds(layout: ParameterLayout, like: torch.Tensor, model) -> Tuple[torch.Tensor, torch.Tensor]:
    """:meth:`ParameterLayout.bounds` with the ``expression`` block's bounds taken from the model's
    ``expression_lower`` / ``expression_upper`` (per coefficient: [0, 1] for blendshape rigs such as ICT-FaceKit,
    +-k standard deviations for PCA expressions, radians for FLAME's linearised jaw and eyes)."""
    lo, hi = layout.bounds(like)
    if "expression" in layout and getattr(model, "expression_lower", None) is not None:
        s = layout.slices["expression"]
        lo[s] = model.expression_lower.to(lo)
        hi[s] = model.expression_upper.to(hi)
    return lo, hi
