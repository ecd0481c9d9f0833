"""What a neural-rendering method gives the shared trainer: its networks, its optimisation phases and its losses.

A method is an ``nn.Module`` holding its networks as submodules (so ``.to()``, ``state_dict`` and DDP wrapping
work) and a dataclass config. The :class:`~neural_renderers.training.trainer.Trainer` owns everything else: the
loop, optimizers, schedulers, AMP, DDP, checkpoints, logging. A step is:

1. ``outputs = method.forward_train(nets, batch)`` - the shared forward pass (e.g. ``fake = G(condition)``);
2. for each :class:`Phase` in ``method.phases()`` (e.g. discriminator, then generator):
   ``losses = method.phase_loss(phase.name, nets, batch, outputs)``, ``losses["total"].backward()``, the
   phase's optimizer steps. In a phase, the networks the phase does not optimise are frozen
   (``requires_grad=False``) and passed unwrapped, so no gradient is computed for them and DDP does not expect
   one.

Methods register themselves with :func:`register_method` so ``facerender train NAME`` and checkpoints find them
by name.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Iterator, List, Mapping, Tuple, Type

import torch
from torch import nn

__all__ = ["Method", "Phase", "Nets", "register_method", "get_method", "available_methods"]


@dataclass(frozen=True)
class Phase:
    """One optimisation phase: the networks it updates (by name) and its Adam settings."""

    name: str
    networks: Tuple[str, ...]
    lr: float = 2e-4
    betas: Tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0


class Nets(Mapping[str, nn.Module]):
    """Read-only name -> network mapping handed to the method, with attribute access (``nets.generator``)."""

    def __init__(self, nets: Mapping[str, nn.Module]):
        self._nets = dict(nets)

    def __getitem__(self, key: str) -> nn.Module:
        return self._nets[key]

    def __getattr__(self, key: str) -> nn.Module:
        try:
            return self.__dict__["_nets"][key]
        except KeyError:
            raise AttributeError(f"no network {key!r}; have {sorted(self.__dict__['_nets'])}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._nets)

    def __len__(self) -> int:
        return len(self._nets)


class Method(nn.Module, metaclass=abc.ABCMeta):
    """Base class of a neural-rendering method (see the module docstring).

    Subclasses set ``name`` and ``config_class`` and implement :meth:`networks`, :meth:`phases`,
    :meth:`forward_train`, :meth:`phase_loss`; they may override :meth:`visuals`, :meth:`validate` and
    :meth:`signature`.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object

    def __init__(self, config):
        super().__init__()
        self.config = config
        #: set by the trainer: use the channels-last memory format at the network boundary (CUDA).
        self.channels_last = False

    # ---------------------------------------------------------------------------------------------- to implement
    @abc.abstractmethod
    def networks(self) -> Dict[str, nn.Module]:
        """``{name: network}`` of every network the method trains (checkpointed by these names)."""

    @abc.abstractmethod
    def phases(self) -> List[Phase]:
        """The optimisation phases in the order they run within one step."""

    @abc.abstractmethod
    def forward_train(self, nets: Nets, batch: Dict[str, Any]) -> Dict[str, Any]:
        """The forward pass shared by the phases of one step (may be empty)."""

    @abc.abstractmethod
    def phase_loss(self, phase: str, nets: Nets, batch: Dict[str, Any], outputs: Dict[str, Any]
                   ) -> Dict[str, torch.Tensor]:
        """Scalar loss tensors of ``phase``; ``"total"`` is back-propagated, the others are logged."""

    # ---------------------------------------------------------------------------------------------- optional
    def visuals(self, batch: Dict[str, Any], outputs: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Columns of the sample grid, ``{title: (B, H, W, 3)}`` in ``[0, 1]`` (conditioning | output | real)."""
        return {}

    @torch.no_grad()
    def validate(self, nets: Nets, batch: Dict[str, Any]) -> Dict[str, float]:
        """Validation figures of one batch (averaged by the trainer); networks are in eval mode."""
        return {}

    def signature(self) -> Dict[str, Any]:
        """What a checkpoint must match to be loaded into this method (shapes: resolution, channels, ...).
        Default: the whole config."""
        from .config import config_to_dict

        return config_to_dict(self.config)


_REGISTRY: Dict[str, Type[Method]] = {}


def register_method(cls: Type[Method]) -> Type[Method]:
    """Class decorator: make a method findable by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin_methods() -> None:
    from .. import dvp  # noqa: F401  (registers "dvp")
    from .. import nvp  # noqa: F401  (registers "nvp-audio", "nvp-render")


def available_methods() -> List[str]:
    """Names of the registered methods."""
    _load_builtin_methods()
    return sorted(_REGISTRY)


def get_method(name: str) -> Type[Method]:
    """The method class registered as ``name`` (ValueError listing the available ones otherwise)."""
    _load_builtin_methods()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown method {name!r}{hint}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]
