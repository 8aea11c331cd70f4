"""Output paths checked before any work starts, so that a long run never ends in a lost profile."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union


class UnwritablePathError(PermissionError, ValueError):
    """An output path that could not be written. A ``PermissionError`` (as the original spprof
    raised at ``start()``) and a ``ValueError`` (a bad argument, for the front ends' usage errors)."""


def check_writable(path: Union[str, os.PathLike], what: str, *, directory: bool = False,
                   creates_folders: bool = False) -> None:
    """Raise UnwritablePathError, naming ``what``, if ``path`` could not be written later.

    A file must not be a folder, and its folder must exist (unless the writer ``creates_folders``)
    and be writable. A ``directory`` must not be a file; it is created when missing, so its
    nearest existing ancestor must be writable."""
    path = Path(path)
    if directory:
        if path.exists() and not path.is_dir():
            raise UnwritablePathError(f"{what} {str(path)!r} is a file, not a folder")
        folder = path
    else:
        if path.is_dir():
            raise UnwritablePathError(f"{what} {str(path)!r} is a folder; give a file name")
        if path.exists() and not os.access(path, os.W_OK):
            raise UnwritablePathError(f"{what} {str(path)!r} is not writable")
        folder = path.parent
        if not folder.is_dir() and not creates_folders:
            raise UnwritablePathError(
                f"{what} {str(path)!r}: the folder {str(folder)!r} does not exist; create it first")
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UnwritablePathError(f"{what} {str(path)!r}: {str(folder)!r} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UnwritablePathError(f"{what} {str(path)!r}: the folder {str(folder)!r} is not writable")
