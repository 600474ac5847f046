import os

os.environ["HF_HUB_OFFLINE"] = "1"  # an accidental download fails fast
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


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
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from textdistill.resources import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    path = tmp_path_factory.mktemp("tiny-generator")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
