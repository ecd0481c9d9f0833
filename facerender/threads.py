"""CPU threads of facerender: the default of every command and ``--threads N``.

torch's own default is one intra-op thread per core. On a busy machine that collapses: each parallel region waits
for its slowest thread, and a thread that the scheduler parked behind another process holds the whole region up
(measured in ``docs/benchmarks/threads.md``: with two other CPU-bound processes on 2 cores, a 256^2 render took
several times longer with 2 threads than with 1). facerender's commands therefore run with
:data:`DEFAULT_THREADS` intra-op threads unless told otherwise:

* ``facerender --threads N COMMAND ...`` (or ``COMMAND ... --threads N``), or
* the environment variable ``FACERENDER_THREADS=N``.

The library itself never changes torch's settings on import (docs/architecture.md, rule 6): a Python user calls
:func:`set_threads` (or ``torch.set_num_threads``) when they want to. Importing this module does not import torch.
"""
from __future__ import annotations

import os
from typing import Optional

__all__ = ["DEFAULT_THREADS", "ENV_VAR", "default_threads", "set_threads", "threads_help", "add_threads_option",
           "run_with_threads"]

#: Intra-op threads of the ``facerender`` commands (docs/benchmarks/threads.md has the measurement behind it).
DEFAULT_THREADS = 1
#: Environment variable that overrides :data:`DEFAULT_THREADS`.
ENV_VAR = "FACERENDER_THREADS"


def default_threads() -> int:
    """The thread count a command uses without ``--threads``: ``$FACERENDER_THREADS`` when set to a positive
    integer, else :data:`DEFAULT_THREADS`.

    Raises:
        ValueError: ``FACERENDER_THREADS`` is set to something that is not a positive integer (names the value).
    """
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return DEFAULT_THREADS
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        from .errors import UsageError

        raise UsageError(f"{ENV_VAR}={raw!r}: must be an integer >= 1 (the number of CPU threads)")
    return n


def set_threads(n: Optional[int] = None) -> int:
    """Set torch's intra-op threads (and the BLAS pools NumPy / SciPy use, through threadpoolctl when installed) to
    ``n`` (default :func:`default_threads`); returns the previous torch setting.

    Raises:
        ValueError: ``n`` is not a positive integer.
    """
    n = default_threads() if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be an integer >= 1, got {n!r}")
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        pass
    return previous


def threads_help() -> str:
    """The ``--threads`` help text (states the default)."""
    return (f"CPU threads for torch and BLAS (default {DEFAULT_THREADS}, or ${ENV_VAR}: more threads help on an idle "
            f"machine and collapse on a busy one; docs/benchmarks/threads.md)")


def add_threads_option(parser) -> None:
    """Give ``parser`` (the ``facerender`` parser) a global ``--threads N`` and the same option on every
    subcommand, so it is accepted before or after the command. Validated by the CLI's argument type (an integer
    >= 1; ``--threads 0`` is an argparse error). A subcommand's own ``--threads`` keeps its help but stops hiding a
    global value (its default becomes "not given"). argparse only: imports no torch."""
    import argparse

    from .cli_support import positive_int

    def walk(p, top: bool):
        own = [a for a in p._actions if "--threads" in a.option_strings]
        if own:
            for a in own:
                a.type = positive_int
                if not top:
                    a.default = argparse.SUPPRESS
                if not a.help:
                    a.help = threads_help()
        else:
            p.add_argument("--threads", type=positive_int, metavar="N",
                           default=None if top else argparse.SUPPRESS, help=threads_help())
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sp in dict.fromkeys(a.choices.values()):  # aliases map to the same parser
                    walk(sp, False)

    walk(parser, True)


def run_with_threads(func):
    """Wrap a command handler: set the threads (``args.threads`` or :func:`default_threads`) before it runs and
    record the number used in ``args.threads``."""
    def run(args):
        n = getattr(args, "threads", None)
        n = default_threads() if n is None else n
        args.threads = n
        set_threads(n)
        return func(args)

    run.__name__ = getattr(func, "__name__", "run")
    run.__doc__ = func.__doc__
    return run
