"""VGG-19 feature extractor with torchvision's layer layout, for perceptual (feature) losses.

No weights are downloaded (nothing can be, and torchvision does not import on our CPU machines): load a
torchvision-format VGG-19 state dict that the user has (``vgg19-dcbb9e9d.pth`` or any ``{"features.0.weight": ...}``
file) with :meth:`VGG19Features.from_file`. Random initialisation is allowed for tests of the mechanics; a random
VGG is not a perceptual metric.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Union

import torch
from torch import nn

__all__ = ["VGG19Features", "VGG19_LAYERS"]

# torchvision's vgg19().features: conv widths, "M" = max pool
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _layer_names():
    names, block, conv = [], 1, 1
    for v in _CFG:
        if v == "M":
            names += [f"pool{block}"]
            block, conv = block + 1, 1
        else:
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            conv += 1
    return names


#: Names of the 37 layers of ``features`` in order (``conv1_1``, ``relu1_1``, ..., ``pool5``).
VGG19_LAYERS = tuple(_layer_names())


class VGG19Features(nn.Module):
    """VGG-19 ``features`` returning the activations of ``layers``.

    ``forward(images (B, 3, H, W) in [-1, 1]) -> {layer: (B, C_l, H_l, W_l)}``; the input is mapped to ImageNet
    normalisation inside (buffers ``mean``, ``std``). Parameters are frozen.

    Args:
        layers: layer names from :data:`VGG19_LAYERS` (default pix2pixHD's ``relu1_1 ... relu5_1``).
    """

    def __init__(self, layers: Sequence[str] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")):
        super().__init__()
        bad = [l for l in layers if l not in VGG19_LAYERS]
        if bad or not layers:
            raise ValueError(f"unknown VGG-19 layers {bad or layers}; available: {list(VGG19_LAYERS)}")
        self.layers = tuple(layers)
        mods, prev = [], 3
        for v in _CFG:
            if v == "M":
                mods.append(nn.MaxPool2d(2, 2))
            else:
                mods += [nn.Conv2d(prev, v, 3, 1, 1), nn.ReLU(inplace=False)]
                prev = v
        last = max(VGG19_LAYERS.index(l) for l in self.layers)
        self.features = nn.Sequential(*mods[: last + 1])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    @classmethod
    def from_file(cls, path: Union[str, Path], layers: Sequence[str] = ("relu1_1", "relu2_1", "relu3_1",
                                                                          "relu4_1", "relu5_1")) -> "VGG19Features":
        """Load torchvision-format weights (``features.<i>.weight`` / ``.bias``; classifier entries are ignored).

        Raises:
            FileNotFoundError: no such file. ValueError: the file is not a VGG-19 state dict (names what is missing).
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no VGG-19 weights at {str(p)!r}")
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a state dict"
            raise ValueError(f"{str(p)!r} is not a readable torch state dict: {e}") from e
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        net = cls(layers)
        want = {k: v for k, v in net.features.state_dict().items()}
        got: Dict[str, torch.Tensor] = {}
        for k in want:
            key = "features." + k
            if key not in sd:
                raise ValueError(f"{str(p)!r} is not a torchvision VGG-19 state dict: missing {key!r} "
                                 f"(has {sorted(sd)[:6]}...)")
            if tuple(sd[key].shape) != tuple(want[k].shape):
                raise ValueError(f"{str(p)!r}: {key} has shape {tuple(sd[key].shape)}, VGG-19 needs "
                                 f"{tuple(want[k].shape)}")
            got[k] = sd[key]
        net.features.load_state_dict(got)
        return net

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = ((images + 1) * 0.5 - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        out = {}
        want = set(self.layers)
        for i, m in enumerate(self.features):
            x = m(x)
            name = VGG19_LAYERS[i]
            if name in want:
                out[name] = x
        return out
