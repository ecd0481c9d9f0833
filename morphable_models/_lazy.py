"""Lazy package exports (PEP 562): names resolve to their module on first access, so importing a package is cheap
(``import facerender`` imports neither torch nor numpy) and ``facerender --help`` stays fast.

A package ``__init__`` declares what it exports and installs the hooks::

    from morphable_models._lazy import attach
    __getattr__, __dir__, __all__ = attach(__name__, {"load_ict": ".ict", "IBUG68_LABELS": ".landmarks"})

Unknown names raise ``AttributeError`` with close matches (``difflib``): ``facerender.fit_imge`` says
``did you mean 'fit_image'?``. :func:`make_callable` turns a module into one that can be called like the function it
is named after (``facerender.render(...)`` next to ``facerender.render.rasterize``), so ``pkg.name(...)`` works
whether the import system bound ``pkg.name`` to the submodule or the package bound it to the function.

Standard library only (every layer imports it).
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Callable, Dict, Iterable, List, Mapping, Tuple

__all__ = ["attach", "suggest", "make_callable", "CallableModule"]


def suggest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the close matches of ``name`` among ``candidates`` (``""`` if none)."""
    import difflib  # only when a name is wrong

    cands = [c for c in candidates if not c.startswith("_")]
    matches = difflib.get_close_matches(name, cands, n=n, cutoff=0.6)
    if not matches:  # case slips (Track vs track) and prefixes (fit vs fit_image)
        low = name.lower()
        matches = [c for c in cands if c.lower() == low or (len(low) >= 3 and c.lower().startswith(low))][:n]
    return f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


def attach(package: str, exports: Mapping[str, str], submodules: Iterable[str] = (),
           extra: Iterable[str] = ()) -> Tuple[Callable, Callable, List[str]]:
    """Lazy exports of the package ``package``; returns ``(__getattr__, __dir__, __all__)`` to assign in its
    ``__init__``.

    Args:
        package: the package's ``__name__``.
        exports: ``{public name: "module"}`` or ``{public name: "module:attribute"}``; ``module`` is relative to
            the package when it starts with ``"."`` (``".ict"``), else absolute (``"morphable_models.store"``).
        submodules: sub-packages / modules reachable as attributes (``facerender.fitting``), imported on first
            access; not in ``__all__`` (``from pkg import *`` does not import them).
        extra: names defined eagerly in the package that belong in ``__all__``.
    """
    table: Dict[str, Tuple[str, str]] = {}
    for name, target in exports.items():
        mod, _, attr = target.partition(":")
        table[name] = (mod, attr or name)
    subs = tuple(submodules)
    public = sorted(set(table) | set(extra))

    def __getattr__(name: str):
        pkg = sys.modules[package]
        if name in table:
            mod, attr = table[name]
            value = getattr(importlib.import_module(mod, package), attr)
            setattr(pkg, name, value)  # once: later accesses do not come here
            return value
        if name in subs:
            return importlib.import_module(f".{name}", package)
        if name.startswith("__"):  # dunder probes (copy, pickle, doctest ...) get the plain error
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        known = set(table) | set(subs) | {k for k in vars(pkg) if not k.startswith("_")}
        raise AttributeError(f"module {package!r} has no attribute {name!r}{suggest(name, known)}")

    def __dir__() -> List[str]:
        pkg = sys.modules[package]
        return sorted(set(vars(pkg)) | set(table) | set(subs))

    shadowed = {n for n, (mod, _) in table.items() if mod == f".{n}"}
    if shadowed:  # an exported function named like its module (fitting.fit_image, reenact.face2face)
        pkg = sys.modules[package]
        pkg.__shadowed__ = {n: table[n][1] for n in shadowed}
        if not isinstance(pkg, _Package):
            pkg.__class__ = _Package if not isinstance(pkg, CallableModule) else _CallablePackage
    return __getattr__, __dir__, public


class _Package(types.ModuleType):
    """A package whose exported function ``name`` keeps its name when the submodule ``name`` is imported: the
    import system binds ``pkg.name`` to the submodule after loading it; here that binding becomes the function."""

    def __setattr__(self, name, value):
        shadowed = self.__dict__.get("__shadowed__", {})
        if (name in shadowed and isinstance(value, types.ModuleType)
                and value.__name__ == f"{self.__name__}.{name}"):
            value = getattr(value, shadowed[name])
        super().__setattr__(name, value)


class CallableModule(types.ModuleType):
    """A module that can be called: ``module(*args)`` calls ``module.<__call_target__>(*args)``."""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__dict__["__call_target__"])(*args, **kwargs)


class _CallablePackage(_Package, CallableModule):
    pass


def make_callable(module_name: str, function: str) -> None:
    """Make the module ``module_name`` callable as its function ``function`` (call at the END of the module)."""
    mod = sys.modules[module_name]
    mod.__call_target__ = function
    if not isinstance(mod, CallableModule):
        mod.__class__ = _CallablePackage if isinstance(mod, _Package) else CallableModule
