"""What every ``facerender`` command shares for reliability (docs/errors.md): argument types that validate ranges
at parse time, the output check run before any work, and the mapping of exceptions to ONE line on stderr and a
documented exit code, with ``--debug`` (or ``FACERENDER_DEBUG=1``) to get the traceback back.

A new command joins it by

* using the argument types below (``int_in``, ``float_in``, ``positive_int``, ``box_type`` ...) for every number;
* naming its output ``-o/--output`` (``dest="output"``): :func:`prepare_outputs` checks it before the handler runs.
  The default is a folder; a command whose ``-o`` is a file sets ``output_kind="file"`` (and ``output_suffixes``)
  with ``set_defaults``; a command that writes into the model cache sets ``writes_home=True``;
* raising the package's typed errors (:mod:`facerender.errors`), whose ``exit_code`` picks the exit status.

This module imports neither torch nor numpy (``facerender --help`` stays fast).
"""
from __future__ import annotations

import argparse
import enum
import errno
import math
import os
import shutil
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

from .errors import FaceRenderError, InputFileError, OutputError, UsageError

__all__ = [
    "ExitCode", "EXIT_CODES", "CLIParser", "int_in", "float_in", "positive_int", "nonnegative_int", "positive_float",
    "finite_float", "fraction_in", "box_type", "check_box", "check_input_path", "check_video_or_track",
    "ensure_writable_output",
    "prepare_outputs", "registered_outputs", "classify", "one_line", "debug_requested", "strip_debug",
    "run_handler", "format_warning", "warn",
]


class ExitCode(enum.IntEnum):
    """Exit statuses of ``facerender`` (stable; documented in docs/errors.md)."""

    OK = 0
    FAILED = 1  #: the input was usable but the job could not be done (no face, fit impossible, diverged, memory)
    USAGE = 2  #: an argument is wrong (out of range, malformed, inconsistent): argparse and UsageError
    INPUT = 3  #: an input file or folder is missing, unreadable, empty, truncated or of the wrong kind
    OUTPUT = 4  #: an output cannot be written (read-only, full disk, a file in the way, unknown suffix)
    MODEL = 5  #: the face model or its cache is missing or broken
    INTERNAL = 70  #: an unexpected exception: a bug in facerender (rerun with --debug and report it)
    INTERRUPTED = 130  #: Ctrl-C


#: ``(code, name, meaning)`` rows of docs/errors.md.
EXIT_CODES: Tuple[Tuple[int, str, str], ...] = tuple(
    (int(c), c.name.lower(), {
        ExitCode.OK: "success (results that cannot be fully trusted are flagged with 'warning:' lines and in the "
                     "outputs' flags)",
        ExitCode.FAILED: "the input was read but the job could not be done: no face found, unusable landmarks, "
                         "training diverged, out of memory",
        ExitCode.USAGE: "a command-line argument is wrong: out of range, malformed, inconsistent with another",
        ExitCode.INPUT: "an input is missing, unreadable, empty, truncated, corrupt or of the wrong kind",
        ExitCode.OUTPUT: "an output cannot be written: read-only or full location, a file in the way, unknown suffix",
        ExitCode.MODEL: "the face model is not installed, or its cache or file is broken",
        ExitCode.INTERNAL: "an unexpected error: a bug in facerender; rerun with --debug and report the traceback",
        ExitCode.INTERRUPTED: "interrupted (Ctrl-C); outputs are either complete or absent",
    }[c]) for c in ExitCode)


# ------------------------------------------------------------------------------------------------------------------
# argument parsing


class CLIParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are ONE line (``facerender fit: error: argument --size: ...``) and exit 2.

    Subparsers created through ``add_subparsers`` inherit the class, so every command gets the same behaviour.
    """

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(int(ExitCode.USAGE), f"{self.prog}: error: {one_line(message)} (see '{self.prog} --help')\n")


def _number(text: str, kind: type, what: str):
    try:
        v = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return v


def _range_text(lo, hi, lo_open: bool, hi_open: bool, kind: str) -> str:
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{kind} {'<' if hi_open else '<='} {hi}"
    return kind


def int_in(lo: Optional[int] = None, hi: Optional[int] = None) -> Callable[[str], int]:
    """argparse type: an integer in ``[lo, hi]`` (either bound may be None)."""
    what = _range_text(lo, hi, False, False, "an integer")

    def parse(text: str) -> int:
        v = _number(text, int, what)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return v

    parse.__name__ = "integer"  # argparse names the type in "invalid <name> value" messages
    return parse


def float_in(lo: Optional[float] = None, hi: Optional[float] = None, *, lo_open: bool = False,
             hi_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number in the interval from ``lo`` to ``hi`` (open ends when asked)."""
    what = _range_text(lo, hi, lo_open, hi_open, "a finite number")

    def parse(text: str) -> float:
        v = _number(text, float, what)
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return v

    parse.__name__ = "number"
    return parse


positive_int = int_in(1)
nonnegative_int = int_in(0)
positive_float = float_in(0.0, lo_open=True)
finite_float = float_in()


def fraction_in(lo: float = 0.0, hi: float = 1.0, *, hi_open: bool = True) -> Callable[[str], float]:
    """argparse type: a number in ``[lo, hi)`` (fractions such as a validation share or a dropout rate)."""
    return float_in(lo, hi, hi_open=hi_open)


def box_type(text: str) -> Tuple[float, float, float, float]:
    """argparse type: a face box ``x0,y0,x1,y1`` in pixels, finite, with ``x0 < x1`` and ``y0 < y1``."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"expected 4 comma-separated numbers x0,y0,x1,y1, got {text!r}")
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 4 comma-separated numbers x0,y0,x1,y1, got {text!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise argparse.ArgumentTypeError(f"the box must be finite, got {text!r}")
    if not (x0 < x1 and y0 < y1):
        raise argparse.ArgumentTypeError(f"the box needs x0 < x1 and y0 < y1 (left, top, right, bottom), got {text!r}")
    return (x0, y0, x1, y1)


def check_box(box: Sequence[float], image_size: Tuple[int, int], arg: str = "--box",
              min_overlap: float = 0.5, min_side: float = 8.0) -> None:
    """Refuse a face box that lies (mostly) outside an image of ``image_size (H, W)`` or is too small to hold a face.

    Raises :class:`~facerender.errors.UsageError` naming ``arg``, the box and the image size.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    H, W = int(image_size[0]), int(image_size[1])
    iw = max(0.0, min(x1, W) - max(x0, 0.0))
    ih = max(0.0, min(y1, H) - max(y0, 0.0))
    area = max((x1 - x0) * (y1 - y0), 1e-12)
    if iw * ih < min_overlap * area:
        raise UsageError(f"{arg} {x0:g},{y0:g},{x1:g},{y1:g}: {100 * iw * ih / area:.0f} % of the box lies inside "
                         f"the {W}x{H} image (x0,y0,x1,y1 in pixels, x right, y down)")
    if min(x1 - x0, y1 - y0) < min_side:
        raise UsageError(f"{arg} {x0:g},{y0:g},{x1:g},{y1:g}: {min(x1 - x0, y1 - y0):g} px is too small for a face "
                         f"(at least {min_side:g} px per side)")


# ------------------------------------------------------------------------------------------------------------------
# inputs and outputs


def check_input_path(path, arg: str, *, kind: str = "file", suffixes: Optional[Iterable[str]] = None,
                     allow_empty: bool = False) -> Path:
    """A readable input ``path`` for argument ``arg`` (``kind``: ``"file"``, ``"dir"`` or ``"any"``).

    Raises ``FileNotFoundError`` (exit 3) when it does not exist and :class:`~facerender.errors.InputFileError`
    when it is the wrong kind (a folder for a file, an empty file, a suffix not in ``suffixes``), naming ``arg``.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(errno.ENOENT, f"{arg} {p}: no such file or folder", str(p))
    if kind == "file" and p.is_dir():
        raise InputFileError(f"{arg} {p}: is a folder, expected a file")
    if kind == "dir" and not p.is_dir():
        raise InputFileError(f"{arg} {p}: is a file, expected a folder")
    if p.is_file():
        if not os.access(p, os.R_OK):
            raise InputFileError(f"{arg} {p}: not readable (permission denied)")
        if not allow_empty and p.stat().st_size == 0:
            raise InputFileError(f"{arg} {p}: the file is empty (0 bytes)")
        if suffixes is not None:
            ok = [s.lower() for s in suffixes]
            if p.suffix.lower() not in ok:
                raise InputFileError(f"{arg} {p}: expected a {'/'.join(ok)} file, got {p.suffix or 'no suffix'!r}")
    return p


def check_video_or_track(path, arg: str) -> Path:
    """An input that is a video file or a folder written by ``facerender track`` (it holds ``params.npz``); refuses
    anything else before any work (:func:`check_input_path` for the file checks)."""
    p = check_input_path(path, arg, kind="any")
    if p.is_dir() and not (p / "params.npz").is_file():
        raise InputFileError(f"{arg} {p}: a folder without params.npz: give a video, or a folder written by "
                             f"'facerender track VIDEO -o DIR'")
    return p


_OUTPUTS: List[Path] = []


def registered_outputs() -> List[Path]:
    """The outputs checked by :func:`ensure_writable_output` in this process (used to tell output errors from input
    errors)."""
    return list(_OUTPUTS)


def _existing_ancestor(p: Path) -> Path:
    a = p
    while not a.exists():
        if a.parent == a:
            break
        a = a.parent
    return a


def ensure_writable_output(path, *, arg: str = "-o", kind: str = "dir", suffixes: Optional[Iterable[str]] = None,
                           need_bytes: int = 0, probe: bool = True) -> Path:
    """Check, before any work starts, that ``path`` can be written; create nothing.

    ``kind="dir"``: ``path`` is (or will be) a folder: it must not be a file, and its nearest existing ancestor must
    be a folder. ``kind="file"``: ``path`` must not be a folder, its suffix must be in ``suffixes`` (when given) and
    the nearest existing ancestor of its folder must be a folder. Then a one-byte probe file is written and removed
    in that folder (``probe``): this catches read-only file systems, missing permissions and a full disk. When
    ``need_bytes`` is given, the free space there must be at least that.

    Returns the path. Raises :class:`~facerender.errors.OutputError` naming ``arg``, the path and the cause.
    """
    if str(path) == "":
        raise UsageError(f"{arg}: an empty path")
    p = Path(path).expanduser()
    if kind == "dir":
        if p.exists() and not p.is_dir():
            raise OutputError(f"{arg} {p}: a file of that name exists; give a folder (outputs are written into it)")
        folder = p
    elif kind == "file":
        if p.is_dir():
            raise OutputError(f"{arg} {p}: is a folder; give a file name")
        if suffixes is not None:
            ok = [s.lower() for s in suffixes]
            if p.suffix.lower() not in ok:
                got = repr(p.suffix) if p.suffix else "no suffix"
                raise OutputError(f"{arg} {p}: {got}; the file type comes from the suffix: use one of "
                                  f"{', '.join(ok)}")
        folder = p.parent
    else:  # pragma: no cover - programming error
        raise ValueError(f"kind must be 'dir' or 'file', got {kind!r}")
    anc = _existing_ancestor(folder)
    if not anc.is_dir():
        raise OutputError(f"{arg} {p}: {anc} is a file, so the folder cannot be created there")
    if probe:
        fd, name = None, None
        try:
            fd, name = tempfile.mkstemp(prefix=".facerender-probe-", dir=anc)
            os.write(fd, b"\0")
        except OSError as e:
            raise OutputError(f"{arg} {p}: cannot write in {anc}: {_strerror(e)}") from None
        finally:
            if fd is not None:
                os.close(fd)
            if name is not None:
                try:
                    os.unlink(name)
                except OSError:
                    pass
    if need_bytes > 0:
        free = shutil.disk_usage(anc).free
        if free < need_bytes:
            raise OutputError(f"{arg} {p}: needs about {need_bytes / 2**20:.0f} MB, {anc} has "
                              f"{free / 2**20:.1f} MB free")
    _OUTPUTS.append(p.resolve() if p.exists() else Path(os.path.abspath(p)))
    return p


def prepare_outputs(args) -> None:
    """Check the outputs of a parsed command before its handler runs (see the module docstring): ``args.output``
    as ``args.output_kind`` (default ``"dir"``), a ``--json FILE`` report, and the model cache when
    ``args.writes_home``."""
    out = getattr(args, "output", None)
    if out is not None and getattr(args, "output_kind", "dir") is not None:
        ensure_writable_output(out, arg="-o/--output", kind=getattr(args, "output_kind", "dir"),
                               suffixes=getattr(args, "output_suffixes", None))
    js = getattr(args, "json", None)
    if isinstance(js, str):  # a --json FILE report (``model info --json`` is a flag)
        ensure_writable_output(js, arg="--json", kind="file")
    home = getattr(args, "home", None)
    if home is not None and Path(home).expanduser().is_file():
        raise UsageError(f"--home {home}: is a file; the model cache is a folder")
    if getattr(args, "writes_home", False):
        from morphable_models.paths import facerender_home

        root = facerender_home(home)
        where = "--home" if home is not None else ("FACERENDER_HOME" if os.environ.get("FACERENDER_HOME")
                                                   else "the model cache")
        ensure_writable_output(root / "models", arg=where, kind="dir",
                               need_bytes=int(getattr(args, "home_bytes", 0) or 0))


# ------------------------------------------------------------------------------------------------------------------
# exceptions -> one line and an exit code

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG}
_PACKAGES = ("facerender", "morphable_models", "neural_renderers")


def one_line(text: str) -> str:
    """``text`` on one line (newlines and runs of spaces collapsed)."""
    return " ".join(str(text).split())


def _strerror(e: OSError) -> str:
    if e.errno in _FULL:
        return "no space left on the device (the disk or quota is full)"
    if e.errno == errno.EROFS:
        return "read-only file system"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return e.strerror or str(e)


def _is_output(filename) -> bool:
    if not filename:
        return False
    try:
        f = Path(os.path.abspath(os.fsdecode(filename)))
    except (TypeError, ValueError):
        return False
    for o in _OUTPUTS:
        if f == o or o in f.parents:
            return True
    return False


def _causes(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ if (e.__cause__ is not None or e.__suppress_context__) else e.__context__


def _raised_in_package(e: BaseException) -> bool:
    tb = traceback.extract_tb(e.__traceback__)
    if not tb:
        return False
    parts = Path(tb[-1].filename).parts
    return any(p in _PACKAGES for p in parts[-4:-1])


def _where(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    if not tb:
        return ""
    fr = tb[-1]
    parts = Path(fr.filename).parts
    for i, p in enumerate(parts):
        if p in _PACKAGES:
            return f" at {'/'.join(parts[i:])}:{fr.lineno}"
    return f" at {Path(fr.filename).name}:{fr.lineno}"


def classify(e: BaseException) -> Tuple[int, str]:
    """``(exit code, one-line message)`` for an exception escaping a command (docs/errors.md has the table)."""
    if isinstance(e, KeyboardInterrupt):
        return int(ExitCode.INTERRUPTED), "interrupted"
    msg = one_line(str(e)) or type(e).__name__
    # a full disk or a read-only file system anywhere in the cause chain is an output problem
    for c in _causes(e):
        if isinstance(c, OSError) and (c.errno in _FULL or c.errno == errno.EROFS):
            why = _strerror(c)
            if isinstance(e, FaceRenderError):  # its own message names the file; add the cause when it does not
                detail = msg if why in msg else f"{msg} ({why})"
            else:
                detail = f"{os.fsdecode(c.filename)}: {why}" if c.filename else why
            return int(ExitCode.OUTPUT), one_line(detail)
    code = getattr(type(e), "exit_code", None)
    if isinstance(code, int):
        return code, msg
    from morphable_models.errors import ModelFileError, ModelNotInstalledError

    if isinstance(e, UsageError):
        return int(ExitCode.USAGE), msg
    if isinstance(e, OutputError):
        return int(ExitCode.OUTPUT), msg
    if isinstance(e, (ModelFileError, ModelNotInstalledError)):
        return int(ExitCode.MODEL), msg
    if isinstance(e, InputFileError):
        return int(ExitCode.INPUT), msg
    from .errors import VideoError

    if isinstance(e, VideoError):
        return int(ExitCode.INPUT), msg
    if isinstance(e, (FaceRenderError,)) or type(e).__module__.startswith("morphable_models"):
        return int(ExitCode.FAILED), msg
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return int(ExitCode.FAILED), f"out of memory ({msg}); try a smaller --size, --batch-size or --max-frames"
    if isinstance(e, OSError):
        fn = e.filename
        out = _is_output(fn) or _is_output(getattr(e, "filename2", None))
        if fn is None:
            text = msg
        elif e.strerror and os.fsdecode(fn) in e.strerror:
            text = e.strerror
        else:
            text = f"{os.fsdecode(fn)}: {_strerror(e)}"
        return int(ExitCode.OUTPUT if out else ExitCode.INPUT), one_line(text)
    if isinstance(e, (ValueError, TypeError, KeyError)) and _raised_in_package(e):
        # facerender's own checks raise ValueError stating what was received (docs/architecture.md, rule 9)
        return int(ExitCode.FAILED), msg
    return int(ExitCode.INTERNAL), (f"internal error: {type(e).__name__}: {msg}{_where(e)}. This is a bug in "
                                    f"facerender: rerun with --debug for the traceback and report it")


def debug_requested(argv: Optional[Sequence[str]] = None) -> bool:
    """``--debug`` anywhere on the command line, or ``FACERENDER_DEBUG`` set to a true value."""
    env = os.environ.get("FACERENDER_DEBUG", "").strip().lower()
    if env and env not in ("0", "false", "no", "off"):
        return True
    return "--debug" in (argv if argv is not None else sys.argv[1:])


def strip_debug(argv: Sequence[str]) -> List[str]:
    """``argv`` without ``--debug`` (accepted anywhere on the line, before or after the command), up to ``--``."""
    out, rest = [], False
    for a in argv:
        if a == "--":
            rest = True
        if a == "--debug" and not rest:
            continue
        out.append(a)
    return out


def format_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings`` in the command-line tool: ``facerender: warning: MESSAGE`` on one line (``--debug`` keeps
    Python's default format with the source location)."""
    return f"facerender: warning: {one_line(str(message))}\n"


def warn(text: str, prog: str = "facerender") -> None:
    """Tell the user that a result cannot be fully trusted (or an option cannot be honoured): one line on stderr,
    ``facerender: warning: ...``; the command still exits 0. Flags also go into the outputs (params/summary)."""
    print(f"{prog}: warning: {one_line(text)}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    try:
        (file or sys.stderr).write(format_warning(message, category, filename, lineno, line))
    except (OSError, ValueError):
        pass


def run_handler(func: Callable, args, *, debug: bool = False, prog: str = "facerender",
                stderr=None) -> int:
    """Run a command handler; any exception becomes one line on ``stderr`` and an exit code (:func:`classify`).

    With ``debug`` the traceback is printed first. ``SystemExit`` passes through (argparse, explicit exits).
    """
    err = stderr if stderr is not None else sys.stderr
    try:
        if not debug:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning  # restored by catch_warnings
                prepare_outputs(args)
                return int(func(args) or 0)
        prepare_outputs(args)
        return int(func(args) or 0)
    except SystemExit:
        raise
    except BrokenPipeError:  # `facerender ... | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 141
    except BaseException as e:  # noqa: BLE001 - this is the one place that turns exceptions into exit codes
        code, msg = classify(e)
        if debug and not isinstance(e, KeyboardInterrupt):
            traceback.print_exc(file=err)
        if code == ExitCode.INTERNAL:
            print(f"{prog}: {msg}", file=err)
        elif code == ExitCode.INTERRUPTED:
            print(f"{prog}: interrupted", file=err)
        else:
            print(f"{prog}: error: {msg}", file=err)
        try:
            err.flush()
        except (OSError, ValueError):
            pass
        return code
