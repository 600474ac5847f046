"""Language models that write text: one loader and seeded generation, shared by the methods that write sets."""

from __future__ import annotations

from functools import lru_cache


def first_line(text: str) -> str:
    """What a chat model wrote as its answer: the first non-empty line, without list marks or quotes."""
    return next((line.strip(" -*\"'") for line in text.splitlines() if line.strip(" -*\"'")), "")


class CausalLM:
    """A causal LM by name (offline default ``smollm2-135m``, SmolLM2-135M-Instruct; any local folder or hub id),
    prompted through its chat template when it has one."""

    def __init__(self, name: str = "smollm2-135m", device: str = "cpu") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..resources import check_model, resolve_model

        path = resolve_model(name)  # a named model is converted (once) to a local folder first
        check_model(path)
        self.name, self.device = name, device
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()

    def generate(self, prompt: str, n: int, max_new_tokens: int = 40, seed: int = 0, temperature: float = 0.8,
                 top_p: float = 0.95) -> list[str]:
        """``n`` sampled continuations of ``prompt`` (their first non-empty line), reproducible from ``seed``."""
        import torch

        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        else:
            text = prompt
        enc = self.tokenizer(text, return_tensors="pt").to(self.device)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p,
                                      max_new_tokens=max_new_tokens, num_return_sequences=n,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return [first_line(t) for t in self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                                     skip_special_tokens=True)]


@lru_cache(maxsize=2)
def load_lm(name: str = "smollm2-135m", device: str = "cpu") -> CausalLM:
    """One loaded copy per (name, device) per process."""
    return CausalLM(name, device)


class OpenAIChat:
    """Any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, hosted models): ``openai:URL/MODEL``; the key
    comes from ``OPENAI_API_KEY`` (local servers accept any)."""

    def __init__(self, spec: str) -> None:
        import os

        from openai import OpenAI

        from ..errors import ConfigError

        url, _, model = spec.removeprefix("openai:").rpartition("/")
        if not url or not model:
            raise ConfigError(f"{spec!r}: an endpoint is openai:URL/MODEL, e.g. openai:http://localhost:8000/v1/qwen")
        self.name, self.model = spec, model
        self.client = OpenAI(base_url=url, api_key=os.environ.get("OPENAI_API_KEY", "none"))

    def generate(self, prompt: str, n: int, max_new_tokens: int = 40, seed: int = 0, temperature: float = 0.8,
                 top_p: float = 0.95) -> list[str]:
        reply = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": prompt}],
                                                    n=n, max_tokens=max_new_tokens, temperature=temperature,
                                                    top_p=top_p, seed=seed)
        return [first_line(c.message.content or "") for c in reply.choices]


def get_lm(name: str, device: str = "cpu") -> "CausalLM | OpenAIChat":
    """A text writer by name: ``openai:URL/MODEL`` for an endpoint, else a local or hub causal LM."""
    return OpenAIChat(name) if name.startswith("openai:") else load_lm(name, device)
