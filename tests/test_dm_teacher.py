"""dm's soft labels: the teacher is the learner trained on the whole training split with its full-data recipe."""

import torch

from textdistill.learners import get_learner
from textdistill.methods import get_method


def test_dm_soft_labels_come_from_a_teacher_trained_with_the_full_data_recipe(mr_small, monkeypatch):
    import textdistill.methods.dm as dm

    learner = get_learner("minilm-frozen").for_task(mr_small)
    seen = []
    train = dm.train
    monkeypatch.setattr(dm, "train", lambda lrn, model, x, y, recipe, **kw: seen.append((len(y), recipe)) or
                        train(lrn, model, x, y, recipe, **kw))
    ds = get_method("dm", labels="soft", iterations=2, real_batch=4).distill(mr_small, 1, learner, seed=0)
    n = len(mr_small.train)
    assert seen == [(n, learner.full_data_recipe(n))] and seen[0][1] != learner.default_recipe
    assert ds.labels.shape == (2, 2) and torch.allclose(ds.labels.sum(-1), torch.ones(2))
