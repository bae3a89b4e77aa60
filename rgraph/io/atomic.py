"""Atomic file replacement: a file is either the old one or the complete new one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any


@contextlib.contextmanager
def replace_atomically(
    path: str | os.PathLike, *, suffix: str, text: bool = False, fsync: bool = True
) -> Iterator[IO[Any]]:
    """A file object to write ``path``'s new content into.

    It is a temporary file in the same folder; when the block ends it is flushed, synced
    to disk (``fsync``), given the permissions a new file would get (the umask's, not
    ``mkstemp``'s 0600: model files are for sharing) and renamed over ``path``, then the
    folder is synced. If the block raises, or the process dies, ``path`` is untouched and
    the temporary file is removed (after a kill, a ``.*<suffix>.tmp`` file may remain).
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=f"{suffix}.tmp", dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _sync_folder(folder)


def _sync_folder(folder: str) -> None:
    """Make the rename itself durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
