"""The words of a text as the copying measures count them: runs of word characters, case-folded. A leaf (the
standard library only), shared by the privacy audit's overlap and condense's check for echoed examples."""

from __future__ import annotations

import re

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.casefold())
