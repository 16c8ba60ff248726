"""Writing output files whole or not at all, with one clear error when that cannot be done."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from iapo.errors import InputError, RunError

__all__ = ["OutputError", "UnwritablePath", "check_writable", "write_atomically",
           "write_text_atomically"]


class UnwritablePath(InputError):
    """An output path given by the user cannot be written; the message says why."""


def check_writable(path: str | os.PathLike[str], option: str, folder: bool = False) -> None:
    """Fail before any work unless the file (or the ``folder``) ``path`` can be written, its
    missing folders created: no part of the path is a file and the nearest existing folder is
    writable. ``option`` names it in the message (e.g. ``--out``)."""
    given = str(path)
    target = Path(path).absolute()
    if not folder and target.is_dir():
        raise UnwritablePath(f"{option} {given!r} is a folder; give a file name")
    if folder and target.exists() and not target.is_dir():
        raise UnwritablePath(f"{option} {given!r} is a file, not a folder; give a folder path")
    if target.exists() and not os.access(target, os.W_OK):
        raise UnwritablePath(f"{option} {given!r} exists and is not writable")
    nearest = target if folder else target.parent
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise UnwritablePath(f"{option} {given!r} cannot be written: {str(nearest)!r} is a "
                             "file, not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise UnwritablePath(f"{option} {given!r} cannot be written: folder {str(nearest)!r} "
                             "is not writable; give a folder you may write to")


class OutputError(RunError):
    """An output file could not be written; the message names it and the reason."""


def write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], object],
                     what: str = "") -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, then rename it
    into place: a reader never sees half a file, and a failure (a full disk, a read-only
    folder, a path under /proc) leaves the old file as it was. Returns ``path``; raises
    :class:`OutputError` naming the file and the reason."""
    p = Path(path)
    label = f"{what} {str(p)!r}" if what else repr(str(p))
    tmp: str | None = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        raise OutputError(f"cannot write {label} ({e.strerror or e}); give a path in a folder "
                          "you may write to, on a disk with free space") from e
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return p


def write_text_atomically(path: str | os.PathLike[str], text: str, what: str = "") -> Path:
    """:func:`write_atomically` of a UTF-8 text."""
    return write_atomically(path, lambda fh: fh.write(text.encode("utf-8")), what)
