"""Build the API reference (HTML) from the docstrings with pdoc: every module of facerender, morphable_models and
neural_renderers. ``tests/test_docs.py`` runs it into a temporary folder, so a docstring or an import that breaks
it fails the test suite.

    python docs/build_api.py [-o build/api]          # then open build/api/index.html

pdoc is in the ``dev`` extra (``pip install -e ".[dev]"``). Prints one line per pdoc warning and exits 1 when
there is any (a reference that does not resolve, an annotation that cannot be evaluated ...).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings
from pathlib import Path
from typing import List

PACKAGES = ("morphable_models", "facerender", "neural_renderers")
#: modules that import an optional backend at import time (documented through their package instead)
SKIP = ()


def all_modules() -> List[str]:
    """Every importable module of the three packages (pdoc documents a package's submodules only when its
    ``__all__`` names them, so they are listed explicitly)."""
    names = []
    for pkg in PACKAGES:
        mod = importlib.import_module(pkg)
        names.append(pkg)
        for info in pkgutil.walk_packages(mod.__path__, prefix=pkg + "."):
            if info.name not in SKIP and not info.name.rsplit(".", 1)[-1].startswith("_"):
                names.append(info.name)
    return names


#: pdoc warnings that say nothing about our docstrings: a package spec also adds the submodules its ``__all__``
#: names (listed explicitly here as well), and the ``__init__`` that ``NamedTuple`` generates has no module globals
#: to evaluate postponed annotations in (pdoc then shows them as written).
HARMLESS = ("but a module with this name has already been added", "Error parsing type annotation ForwardRef")


def _materialize(names: List[str]) -> None:
    """Put every lazily exported name into its module's namespace (pdoc documents what ``vars(module)`` holds)."""
    for name in names:
        mod = importlib.import_module(name)
        for member in getattr(mod, "__all__", ()):
            if member not in vars(mod):
                setattr(mod, member, getattr(mod, member))


def build(output: Path) -> List[str]:
    """Write the HTML reference into ``output``; returns pdoc's warnings (one line each) but the harmless ones."""
    import pdoc

    names = all_modules()
    _materialize(names)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*names, output_directory=Path(output))
    out = [" ".join(str(w.message).split()) for w in caught if "pdoc" in (w.filename or "")]
    return [w for w in out if not any(h in w for h in HARMLESS)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", type=Path, default=Path("build/api"))
    args = ap.parse_args(argv)
    problems = build(args.output)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    print(f"wrote {args.output / 'index.html'} ({len(all_modules())} modules, {len(problems)} warnings)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
