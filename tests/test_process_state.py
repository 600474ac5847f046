"""What the package leaves of the process's global state: its progress bars answer one switch (``progress``),
seeded sections give torch's global random state back as they found it, and model loads leave transformers'
logging and progress bars as they were."""

import re

import numpy as np
import pytest
import torch

from textdistill import progress
from textdistill.learners import get_learner
from textdistill.methods import get_method


def test_the_switch_turns_off_every_bar_even_one_asked_for():
    assert progress.enabled()
    with progress.quiet():
        assert not progress.enabled()
        with progress.quiet():
            pass
        assert not progress.enabled()  # a nested block gives back the setting it found
        bar = progress.bar(range(3), disable=False)
        assert bar.disable
        bar.close()
    assert progress.enabled()
    for disable in (True, False):
        bar = progress.bar(range(3), disable=disable, leave=False)
        assert bar.disable is disable
        bar.close()
    assert progress.set_enabled(False) is True and progress.set_enabled(True) is False


def test_a_method_writes_nothing_to_stderr_with_the_switch_off(mr_small, capfd):
    learner, method = get_learner("minilm-frozen"), get_method("dm", iterations=3)
    capfd.readouterr()
    with progress.quiet():
        quiet = method.distill(mr_small, 2, learner, seed=0)
    assert capfd.readouterr().err == ""
    shown = method.distill(mr_small, 2, learner, seed=0)
    assert re.search(r"dm \S+ 2/class", capfd.readouterr().err)  # dm's bar, drawn with the switch on
    assert torch.equal(quiet.tensors["features"], shown.tensors["features"])


def kept(make):
    """``make()`` from two different global torch states: each state is as it was after, and the results equal."""
    results = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # whatever ran before in this process
        before = torch.get_rng_state()
        results.append(make())
        assert torch.equal(torch.get_rng_state(), before)
    return results


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    one, other = a.state_dict(), b.state_dict()
    return one.keys() == other.keys() and all(torch.equal(v, other[k]) for k, v in one.items())


@pytest.mark.parametrize("name", ["minilm", "minilm-frozen", "textcnn-glove", "bilstm-glove", "decoder",
                                  "decoder-lora"])
def test_building_a_learner_leaves_torchs_random_state(name, request):
    if name.startswith("decoder"):
        from textdistill.learners.transformer import DecoderLearner

        learner = DecoderLearner(request.getfixturevalue("tiny_generator"), lora_rank=2 if "lora" in name else 0)
    else:
        learner = get_learner(name)
    first, second = kept(lambda: learner.build(2, seed=3))
    assert same_weights(first, second)


@pytest.mark.parametrize("method, learner, options", [
    ("dm", "minilm-frozen", {"iterations": 2}),  # SyntheticSet.seeded seeds torch for the run
    ("learned-labels", "minilm-frozen", {"outer_steps": 1, "inner_steps": 2, "real_batch": 8}),
    ("gradmm", "tiny-decoder", {"iterations": 1, "embed_steps": 1, "length": 6, "real_batch": 4, "init": "noise"}),
])
def test_distilling_leaves_torchs_random_state(method, learner, options, mr_small, request):
    if learner == "tiny-decoder":
        learner = request.getfixturevalue("tiny_generator")
    learner = get_learner(learner)
    with progress.quiet():
        first, second = kept(lambda: get_method(method, **options).distill(mr_small, 2, learner, seed=0))
    assert first.fingerprint() == second.fingerprint()


def test_evaluating_a_set_leaves_torchs_random_state(mr_small):
    """The loop seeds dropout on the global generator; the evaluation protocol gives the caller's state back."""
    import textdistill as td

    ds = td.distill(mr_small, "random", dpc=2, learner="minilm-frozen")
    first, second = kept(lambda: td.evaluate(mr_small, ds, learners=["textcnn-glove"], seeds=1, progress=False))
    assert first[0].runs[0]["accuracy"] == second[0].runs[0]["accuracy"]


def test_sampling_a_generator_and_an_lm_leaves_torchs_random_state(tiny_generator):
    from textdistill.lm import CausalLM
    from textdistill.lm.generator import Generator

    gen = Generator.pretrained(tiny_generator, ["negative", "positive"], 8)
    sampled, again = kept(lambda: gen.sample(1, 3, pairs=False, top_p=0.95, batch=4, seed=5, progress=False))
    assert sampled == again
    lm = CausalLM(tiny_generator)
    lm.tokenizer.model_input_names = ["input_ids", "attention_mask"]  # MiniLM's tokenizer: no token types for an LM
    first, second = kept(lambda: lm.generate("a film about", 2, max_new_tokens=4, seed=5))
    assert first == second
    # DiLM's stage 2 reads on from where the sampling left torch (the seed's stream), so it asks for that
    ended = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        assert gen.sample(1, 3, pairs=False, top_p=0.95, batch=4, seed=5, progress=False, keep_rng=False) == sampled
        ended.append(torch.get_rng_state())
    assert torch.equal(ended[0], ended[1])


def test_an_inverter_writes_from_its_seed_and_leaves_torchs_random_state(tiny_generator):
    from textdistill.lm.inverter import Inverter, InverterSettings

    def write():
        inv = Inverter(8, InverterSettings(lm=tiny_generator, prefix=2, lora_rank=0)).eval()
        vectors = torch.from_numpy(np.eye(2, 8, dtype=np.float32))
        return inv.write(vectors, n=3, max_new_tokens=4, seed=7)

    first, second = kept(write)
    assert first == second


def test_model_loads_leave_transformers_logging_as_they_found_it():
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging

    from textdistill.learners.transformer import TransformerLearner

    verbosity, bars, hub_bars_off = logging.get_verbosity(), logging.is_progress_bar_enabled(), \
        are_progress_bars_disabled()
    try:
        for level in (logging.INFO, logging.WARNING):
            logging.set_verbosity(level)
            logging.enable_progress_bar()
            learner = TransformerLearner("minilm")  # a new one loads its tokenizer and model again
            learner.build(2, seed=0)
            learner._sentence_vectors(["a film"], None)
            assert logging.get_verbosity() == level
            assert logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    finally:
        logging.set_verbosity(verbosity)
        (logging.enable_progress_bar if bars else logging.disable_progress_bar)()
        assert are_progress_bars_disabled() == hub_bars_off
