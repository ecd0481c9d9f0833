"""Atomic file writes: write to a temporary file in the target's folder, rename over the target on success.

Every writer of facerender (images, videos, landmark files, the CLI's outputs) goes through
:func:`atomic_write`, so a crash, an exception or Ctrl-C never leaves a half-written output behind: the target
either keeps its previous content (or does not exist) or holds the complete new file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import Iterator, Union

from ..errors import OutputError

PathLike = Union[str, os.PathLike]

#: Errors of a location that cannot take the file (raised as :class:`~facerender.errors.OutputError` naming it).
_NO_ROOM = {getattr(errno, "EDQUOT", errno.ENOSPC): "no space left on the device (the disk or quota is full)",
            errno.ENOSPC: "no space left on the device (the disk or quota is full)",
            errno.EFBIG: "the file is too large for this file system",
            errno.EROFS: "read-only file system"}


def temporary_sibling(path: PathLike) -> Path:
    """A fresh, unused name in ``path``'s folder that keeps its suffix (``.out.mp4`` -> ``.out.<hex>.partial.mp4``).

    Keeping the suffix lets writers that pick the format from the name (PIL, PyAV) write the temporary file.
    The file is not created.
    """
    path = Path(path)
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}.partial{path.suffix}")


@contextlib.contextmanager
def atomic_write(path: PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Context manager yielding a temporary path beside ``path``; renamed onto ``path`` when the block succeeds.

    The body writes the complete file to the yielded path (any writer: ``open``, PIL, PyAV, numpy ...).
    On success the data is flushed to disk (``fsync``) and the file atomically replaces ``path``
    (``os.replace``: same folder, so same file system). On an exception (including ``KeyboardInterrupt``) the
    temporary file is removed and the exception propagates; ``path`` is untouched.

    Args:
        path: the final file. Its folder must exist.
        fsync: flush the temporary file to disk before the rename (so a power loss cannot leave an empty target).

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist, or the body finished without creating the
            temporary file.
        IsADirectoryError: ``path`` is a directory.
        OutputError: (an ``OSError``) the disk or quota is full, or the file system is read-only: the message names
            ``path`` (the writer's own error is its cause).

    Example:
        >>> with atomic_write("out.txt") as tmp:
        ...     tmp.write_text("complete content")
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: the folder {str(folder)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {str(path)!r}: it is a directory")
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(
                f"writing {str(path)!r}: the writer did not create the temporary file {str(tmp)!r}"
            )
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if e.errno in _NO_ROOM and not isinstance(e, OutputError):  # name the file the user asked for
            raise OutputError(f"cannot write {str(path)!r}: {_NO_ROOM[e.errno]}") from e
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


__all__ = ["atomic_write", "temporary_sibling"]
