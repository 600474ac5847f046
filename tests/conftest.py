import os

os.environ["HF_HUB_OFFLINE"] = "1"  # an accidental download fails fast
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def throwaway_generator_cache(tmp_path_factory):
    """The generators tests train (tiny random LMs in new temporary folders, so new cache keys every run, about
    75 MB a run) go to a temporary cache; converted models, downloads, sentence vectors and the rest stay the
    user's cache, shared with the tests as before."""
    from textdistill.cache import KINDS
    from textdistill.resources import cache_dir

    real = cache_dir()
    private = tmp_path_factory.mktemp("cache")
    for kind in set(KINDS) - {"dilm", "generators"}:
        (real / kind).mkdir(exist_ok=True)
        (private / kind).symlink_to(real / kind)
    before = os.environ.get("TEXTDISTILL_CACHE")
    os.environ["TEXTDISTILL_CACHE"] = str(private)  # dilm/ and generators/ land here
    yield private
    if before is None:
        del os.environ["TEXTDISTILL_CACHE"]
    else:
        os.environ["TEXTDISTILL_CACHE"] = before


@pytest.fixture(scope="session")
def mr():
    from textdistill.data import get_task

    return get_task("mr")


@pytest.fixture(scope="session")
def mr_small(mr):
    """A small real slice of MR: 12 training examples per class, 60 test examples."""
    return mr.subset(train_per_class=12, test_size=60, seed=0)


@pytest.fixture(scope="session")
def tiny_generator(tmp_path_factory):
    """A randomly initialised two-layer causal LM with MiniLM's tokenizer, saved as a local model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return save_tiny_lm(tmp_path_factory, "tiny-generator", LlamaForCausalLM, lambda tokenizer: LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id))


def save_tiny_lm(tmp_path_factory, name: str, model_class, config_of) -> str:
    """A randomly initialised (seed 0) causal LM of ``config_of(tokenizer)`` with MiniLM's tokenizer, saved as a
    local model folder."""
    import torch
    from transformers import AutoTokenizer

    from textdistill.resources import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(name)
    model_class(config_of(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _check_accuracy(task, source, result, recompute=True):
    """Checks an evaluation's accuracy can fail: every run's is a whole number of correct answers over the test
    split, the mean is the mean of the runs, and (``recompute``) the first run, done again by hand from its
    learner seed and the recorded recipe, gives the same accuracy."""
    import types

    import numpy as np
    import torch

    from textdistill.learners import get_learner
    from textdistill.losses import set_loss
    from textdistill.train import Recipe, predict, train

    if isinstance(result, dict):  # a bench record
        result = types.SimpleNamespace(**result)
    texts, pairs, y = task.columns("test")
    accs = [r["accuracy"] for r in result.runs]
    for a in accs:
        assert a * len(y) == pytest.approx(round(a * len(y)), abs=1e-4), (a, len(y))
    assert result.accuracy_mean == pytest.approx(float(np.mean(accs)))
    if recompute:
        learner, run = get_learner(result.learner).for_task(task), result.runs[0]
        if source is None:
            train_texts, train_pairs, train_y = task.columns("train")
            inputs, labels, lrs = learner.encode(train_texts, train_pairs), torch.tensor(train_y), None
        else:
            inputs, labels = source.inputs_for(learner), source.labels
            lrs = source.lrs if source.kind != "text" else None
        recipe = Recipe.from_dict(result.recipe)
        model = learner.build(task.num_classes, run["learner_seed"])
        params = train(learner, model, inputs, labels, recipe, seed=run["learner_seed"], lrs=lrs,
                       loss=set_loss(source, recipe))
        preds = predict(learner, model, params, learner.encode(texts, pairs))
        assert run["accuracy"] == pytest.approx(float((preds == torch.tensor(y)).float().mean()))


@pytest.fixture
def check_accuracy():
    return _check_accuracy
