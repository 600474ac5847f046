"""The `pack` coreset (real sentences of one cluster glued up to the learner's max length) and the token count that
`show`, the bench report and the audit give beside a set's examples."""

import dataclasses
import re

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from textdistill.data import Task, get_task
from textdistill.distilled import DistilledDataset
from textdistill.errors import ConfigError
from textdistill.learners import get_learner
from textdistill.methods import get_method
from textdistill.tokens import set_tokens, token_counts


def minilm_length(text: str) -> int:
    """The whole text's tokens as MiniLM's own tokenizer gives them, special tokens included."""
    return len(get_learner("minilm").tokenizer(text)["input_ids"])


def with_max_length(task: Task, max_length: int) -> Task:
    return Task(dataclasses.replace(task.spec, max_length=max_length), task.data, task.origin)


def check_glued(ds, task, length, max_length: int) -> None:
    """Each example holds real sentences of its own class only (no sentence twice), glued or cut, within max_length."""
    texts, _, labels = task.columns("train")
    members = ds.log["members"]
    assert [i for m in members for i in m] == ds.source_indices and len(members) == len(ds)
    assert len(set(ds.source_indices)) == len(ds.source_indices)  # clusters do not share members
    for k, (text, y, own) in enumerate(zip(ds.texts, ds.labels.tolist(), members)):
        assert {labels[i] for i in own} == {y}
        assert length(text) <= max_length, (text, length(text))
        if k in ds.log["truncated"]:
            assert len(own) == 1 and texts[own[0]].startswith(text) and len(text) < len(texts[own[0]])
        else:
            assert text == " ".join(texts[i] for i in own)
    assert ds.log["tokens"] == [length(t) for t in ds.texts]


def test_pack_glues_a_clusters_own_sentences_within_minilms_max_length(mr_small):
    ds = get_method("pack", n_init=2).distill(mr_small, 2, get_learner("minilm"), seed=0)
    assert ds.method == "pack" and ds.hard_labels.tolist() == [0, 0, 1, 1] and ds.log["max_length"] == 64
    check_glued(ds, mr_small, minilm_length, 64)
    assert ds.log["truncated"] == [] and any(len(m) > 1 for m in ds.log["members"])  # MR sentences glue
    # k-means seeded as the kmeans method seeds it: each example is its cluster's members, nearest first, up to the
    # first that would not fit
    texts, _, labels = mr_small.columns("train")
    vectors, rng, k = get_learner("minilm").sentence_vectors(texts), np.random.default_rng(0), 0
    for c in (0, 1):
        idx = np.flatnonzero(np.array(labels) == c)
        km = KMeans(n_clusters=2, n_init=2, random_state=int(rng.integers(2**31))).fit(vectors[idx])
        for j, centre in enumerate(km.cluster_centers_):
            mine = idx[km.labels_ == j]
            order = mine[np.argsort(np.linalg.norm(vectors[mine] - centre, axis=1), kind="stable")].tolist()
            used = ds.log["members"][k]
            assert order[: len(used)] == used
            if len(used) < len(order):
                assert minilm_length(ds.texts[k] + " " + texts[order[len(used)]]) > 64
            k += 1
    # glued examples hold more than the single sentences nearest the centroids
    assert sum(minilm_length(t) for t in ds.texts) > sum(minilm_length(texts[m[0]]) for m in ds.log["members"])


def test_a_sentence_longer_than_max_length_is_cut_at_the_last_word_that_fits(mr_small):
    task = with_max_length(mr_small, 12)
    ds = get_method("pack", n_init=2).distill(task, 3, get_learner("minilm-frozen"), seed=1)  # MiniLM's tokens
    check_glued(ds, task, minilm_length, 12)
    assert ds.log["truncated"] and ds.log["max_length"] == 12
    texts, _, _ = task.columns("train")
    for k in ds.log["truncated"]:
        whole = texts[ds.log["members"][k][0]]
        rest = whole[len(ds.texts[k]):]
        assert rest[0].isspace()  # cut between words, at the last one that fits: one more word goes over
        with_next = len(whole) - len(rest.lstrip()) + len(rest.split()[0])
        assert minilm_length(whole[:with_next]) > 12


def test_a_glove_learner_counts_its_regex_words(mr_small):
    """GloVe learners have no subword tokenizer: their length is the words and punctuation they read."""
    task = with_max_length(mr_small, 20)
    ds = get_method("pack", n_init=2).distill(task, 2, get_learner("textcnn-glove"), seed=0)

    def words(text):
        return max(1, len(re.findall(r"[\w']+|[^\w\s]", text.lower())))

    check_glued(ds, task, words, 20)


def test_pack_refuses_a_pair_task(tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_text("text,other,label\n" + "".join(
        f"the first sentence number {i},and the second part {i},{'ab'[i % 2]}\n" for i in range(16)))
    task = get_task(str(f), pair_col="other", test_size=0.25, seed=0)
    with pytest.raises(ConfigError, match="pack.*sentence pairs"):
        get_method("pack").distill(task, 1, get_learner("minilm-frozen"), seed=0)


def test_token_count_equals_a_hand_count():
    names = ["negative", "positive"]
    spec = {"name": "t", "classes": names, "max_length": 64}
    text = DistilledDataset(kind="text", labels=torch.tensor([0, 1]), label_names=names,
                            texts=["the film is good", "bad"], task={"name": "t", "spec": spec})
    # [CLS] the film is good [SEP], [CLS] bad [SEP]
    assert set_tokens(text) == 6 + 3 == set_tokens(text, "minilm-frozen")
    # GloVe reads words and punctuation: the film , is good ! | bad
    glove = dataclasses.replace(text, texts=["the film, is good!", "bad"])
    assert set_tokens(glove, "textcnn-glove") == 6 + 1
    # cut where the learner cuts: at the max length the set records
    short = dataclasses.replace(text, task={"name": "t", "spec": {**spec, "max_length": 3}})
    assert set_tokens(short) == 3 + 3
    assert token_counts(get_learner("minilm"), ["the film is good"], cut=False).tolist() == [6]
    embeds = DistilledDataset(kind="token-embeddings", labels=torch.tensor([0, 1]), label_names=names,
                              bound_to={"id": "textcnn-glove"}, tensors={
                                  "inputs_embeds": torch.randn(2, 3, 50),
                                  "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])})
    assert set_tokens(embeds) == 3
    vectors = DistilledDataset(kind="features", labels=torch.tensor([0, 1]), label_names=names,
                               bound_to={"id": "minilm-frozen"}, tensors={"features": torch.randn(2, 384)})
    assert set_tokens(vectors) is None


def test_distill_pack_end_to_end_and_show_its_tokens(tmp_path, capsys):
    from textdistill.cli import main

    out = tmp_path / "pack"
    assert main(["distill", "--task", "mr", "--method", "pack", "--dpc", "2", "--learner", "minilm-frozen",
                 "--n-init", "2", "--out", str(out)]) == 0
    ds = DistilledDataset.load(out)
    check_glued(ds, get_task("mr"), minilm_length, 64)
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    tokens = sum(minilm_length(t) for t in ds.texts)
    assert f"4 examples (2 per class), {tokens:,} tokens (minilm tokenizer at max length 64)" in shown
