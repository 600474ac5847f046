"""Atomic writes: a file or a folder is written beside its place under a temporary name, given the modes a plain
open/mkdir would give (the user's umask), then renamed into place, so no reader ever sees half of it. A leaf (the
standard library only), so that anything may write this way: ``resources``, ``cache``, ``distilled``, the methods."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


@functools.cache
def umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask alone sets it, racing threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path, folder: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700; give ``path`` the mode a plain open/mkdir would (sets are shared)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~umask())


def temp_folder(near: Path, write: Callable[[Path], None]) -> Path:
    """A new folder beside ``near``, filled by ``write``, with the modes a plain mkdir/open would give: the caller
    renames it into place, so ``near`` never holds a half-written folder."""
    near.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=near.parent, prefix=f".{near.name}.tmp-"))
    try:
        write(tmp)
        for root, _, files in os.walk(tmp):
            follow_umask(Path(root), folder=True)
            for name in files:
                follow_umask(Path(root) / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def check_file_output(path: str | Path, flag: str) -> Path:
    """Refuse, before any work, a file that ``atomic_write`` could not write: a directory, a parent that is a file,
    a folder this process may not create files in (tried with a temporary file: permissions, read-only mounts and
    /proc alike). Missing folders are fine: atomic_write creates them."""
    from .errors import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory; give a file path")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: {folder} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot write in {folder} ({e.strerror})") from None
    return path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        follow_umask(Path(tmp))
        write(Path(tmp))
        follow_umask(Path(tmp))  # again: a writer that creates its own file (safetensors' save_file) makes it 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
