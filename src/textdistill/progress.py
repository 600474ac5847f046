"""Progress bars with one switch for the whole process. Every bar the package draws comes from ``bar``, so a caller
can turn them all off (a bench worker, whose bars would interleave with the driver's) without touching tqdm:
tqdm reads ``TQDM_DISABLE`` only at import, and a bar asked for with ``disable=False`` would override it anyway.
A leaf (tqdm and the standard library only), so that any module may draw bars."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

_enabled = True


def enabled() -> bool:
    """Whether bars are drawn in this process (a bar's own ``disable=`` can still turn it off)."""
    return _enabled


def set_enabled(on: bool) -> bool:
    """Turns every later bar of this process on or off; returns the previous setting."""
    global _enabled
    before, _enabled = _enabled, bool(on)
    return before


@contextmanager
def quiet() -> Iterator[None]:
    """No bars inside the block; the setting before it afterwards."""
    before = set_enabled(False)
    try:
        yield
    finally:
        set_enabled(before)


def bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm.auto.tqdm(iterable, **kwargs)``, disabled while the switch is off. With the switch on, the call's own
    ``disable`` stands as tqdm reads it (``None``: no bar where stderr is not a terminal)."""
    if not _enabled:
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)


def write(message: str, file=None) -> None:
    """A line of text that does not break the bars on screen (``tqdm.write``); printed whatever the switch."""
    tqdm.write(message, file=file)
