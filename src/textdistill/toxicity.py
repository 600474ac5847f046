"""The judge of offensive text: alt-profanity-check's classifier (a linear SVM, calibrated, on TF-IDF of words,
trained on Davidson et al.'s hate-speech tweets and Jigsaw's toxic comments; MIT licence). Its wheel is fetched once
with a pinned SHA-256 and its two model files are read from it, not installed: the package pins one scikit-learn
release and would replace ours. It scores offensive language and profanity, not hate speech against groups (the
paper's judge, Detoxify, was trained for both)."""

from __future__ import annotations

import io
import warnings
import zipfile
from functools import lru_cache

from .resources import sdist

JUDGE_WHEEL = ("alt-profanity-check", "1.9.1", "cccb8ce072306bac21188670777a25cfb1de978aa8c7a93c8e4a43c03b3945c3")


@lru_cache(maxsize=1)
def _judge():
    import joblib

    with zipfile.ZipFile(sdist(*JUDGE_WHEEL, wheel=True)) as wheel, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a release of scikit-learn other than the one it was saved with
        vectorizer, model = (joblib.load(io.BytesIO(wheel.read(f"profanity_check/data/{name}.joblib")))
                             for name in ("vectorizer", "model"))
    return vectorizer, model


def toxicity(texts: list[str]) -> list[float]:
    """The probability that each text is offensive."""
    if not texts:
        return []
    vectorizer, model = _judge()
    return [float(p) for p in model.predict_proba(vectorizer.transform(list(texts)))[:, 1]]
