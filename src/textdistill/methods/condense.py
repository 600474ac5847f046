"""condense (after CondenseLM, Shen et al. 2025): an instruction-following LM condenses clusters of real
examples into new ones, and a learning-signal match decides which generation represents each cluster.

Per class, the real examples are clustered (k-means in the learner's sentence space, ``dpc`` clusters); the
LM is shown the members nearest each centroid and asked for new examples of the class; each candidate is
scored by how well the loss gradient it gives a learner (its head, freshly initialised and seeded) aligns
with the mean gradient of the cluster's real members, and the best candidate stands for the cluster. This
is our reading of the paper's reward matching, not its exact rule (see docs/results.md). Every prompt and
generation is kept in the set's log; a generation that is empty or malformed (too short, an echo of the
instructions, a pair without both texts) is skipped and counted, never written, and so is one that echoes a
real example of its prompt (the same text, or ``echo_overlap`` of its words or the example's): the alignment
score favours the cluster's centre, which is where the prompt's examples sit. Prompts live in
``prompts/condense-{single,pair}.txt``; generations are cached by prompt, so a killed run resumes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.resources import files

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Task
from ..data.task import text_key
from ..learners import Learner
from ..distilled import DistilledDataset
from ..progress import bar as progress_bar, write as progress_write
from ..train import batch_of
from ..words import words
from .base import Distiller, MethodConfig, register_method
from .learned_set import real_inputs

MIN_WORDS = 3  # shorter answers are refusals or fragments ("Sure!", "Positive.")
GRADIENT_CHUNK = 256  # real examples per forward of a cluster's gradient: a whole large cluster runs out of memory
# small instruct LMs often talk about the task instead of doing it ("Here's a revised version:"); such a line
# is not an example of the class
META = re.compile(r"\b(condens\w*|revised|rephras\w*|label+ed|here is|here's|original (text|sentence)s?|"
                  r"(new|this|the following) (sentence|text|example)s?)\b", re.IGNORECASE)


def answer_lines(raw: str) -> list[str]:
    """The lines of an answer without list marks and quotes, less introductions ("Here it is:")."""
    lines = [line.strip().strip("-*\"' ").strip() for line in raw.splitlines()]
    return [line for line in lines if line and not line.endswith(":")]


def prompt_template(pair: bool) -> str:
    return (files(__package__) / "prompts" / f"condense-{'pair' if pair else 'single'}.txt").read_text().strip()


def show_example(text: str, pair: str | None) -> str:
    return f"- {text}" if pair is None else f"- Text 1: {text}\n  Text 2: {pair}"


def parse_generation(raw: str, label: str, pair: bool) -> tuple[str, str | None] | None:
    """The example an LM wrote (a text, or both texts of a pair), or None when the answer is unusable."""
    if pair:
        found = dict(re.findall(r"(?im)^[\W_]*text\s*([12])\s*:\s*(.*?)\s*$", raw))
        parts = [found.get(k, "").strip(" *_\"'") for k in "12"]
    else:
        parts = answer_lines(raw)[:1] or [""]
    if any(len(p.split()) < MIN_WORDS or META.search(p) for p in parts):
        return None
    return parts[0], parts[1] if pair else None


def echoes(candidate: tuple[str, str | None], members: list[tuple[str, str | None]], threshold: float) -> bool:
    """Whether a candidate repeats one of the prompt's real examples: the same text (case and whitespace aside),
    or at least ``threshold`` of the distinct words of the shorter of the two found in the other (a copy, a piece
    of one, one with a few words added or two joined)."""
    key, mine = text_key(*candidate), set(words(" ".join(p for p in candidate if p)))
    for member in members:
        theirs = set(words(" ".join(p for p in member if p)))
        # a member of a word or two would make every candidate using those words an echo: then only the
        # candidate's share counts
        shorter = min(len(mine), len(theirs)) if len(theirs) >= MIN_WORDS else len(mine)
        if text_key(*member) == key or (shorter and len(mine & theirs) / shorter >= threshold):
            return True
    return False


@dataclass
class CondenseConfig(MethodConfig):
    llm: str = field(default="smollm2-135m", metadata={"help": "local or hub causal LM, or openai:URL/MODEL"})
    llm_timeout: float = field(default=120.0, metadata={
        "gt": 0, "help": "openai:URL/MODEL: seconds to wait for one answer before the request is retried"})
    llm_retries: int = field(default=4, metadata={
        "ge": 0, "help": "openai:URL/MODEL: retries of a failed or timed-out request (each said on stderr), with "
                         "exponential backoff from 2 s"})
    members: int = field(default=5, metadata={"ge": 1, "help": "real examples of a cluster shown in its prompt"})
    candidates: int = field(default=8, metadata={"ge": 1, "help": "generations per cluster"})
    max_new_tokens: int = field(default=64, metadata={"ge": 4, "help": "tokens per generation"})
    kind: str = field(default="sentences", metadata={"help": "what the examples are, in the prompt (plural)"})
    echo_overlap: float = field(default=0.8, metadata={
        "gt": 0, "le": 1, "help": "drop a generation sharing this fraction of the distinct words of the shorter "
                                  "text with one of its prompt's real examples (a copy or near-copy; an exact "
                                  "copy, case and whitespace aside, always)"})


def head_gradient(learner: Learner, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                  labels: torch.Tensor) -> torch.Tensor:
    """The mean loss gradient of ``inputs`` with respect to the learner's head, flattened."""
    names = learner.head_parameter_names(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    params.update({k: params[k].clone().requires_grad_(True) for k in names})
    params.update(dict(model.named_buffers()))
    loss = F.cross_entropy(learner.forward(model, params, inputs), labels)
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, [params[k] for k in names])])


def mean_head_gradient(learner: Learner, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                       labels: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """``head_gradient`` of many rows, ``chunk`` (default ``GRADIENT_CHUNK``) rows per forward: the chunks' mean
    gradients weighted by their sizes, which is the mean gradient of all rows."""
    n, total, chunk = len(labels), None, chunk or GRADIENT_CHUNK
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n))
        part = head_gradient(learner, model, batch_of(inputs, idx), labels[idx]) * (len(idx) / n)
        total = part if total is None else total + part
    assert total is not None, "no rows"
    return total


@register_method
class Condense(Distiller):
    name = "condense"
    description = "an instruct LM condenses clusters of real examples; gradient alignment picks the generations"
    Config = CondenseConfig
    uses_device = True

    def run(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        from sklearn.cluster import KMeans

        from ..lm import cached_generate, get_lm
        from .base import class_indices

        cfg = self.config
        texts, pairs, labels = task.columns("train")
        is_pair = pairs is not None
        template = prompt_template(is_pair)
        per_class = class_indices(labels, task.spec.classes, dpc)
        vectors = learner.sentence_vectors(texts, pairs)
        real, _, _ = real_inputs(task, learner)  # encoded once; clusters take rows of it
        endpoint = {"timeout": cfg.llm_timeout, "retries": cfg.llm_retries} if cfg.llm.startswith("openai:") else {}
        lm = get_lm(cfg.llm, self.device, **endpoint)
        model = learner.build(task.num_classes, seed).eval()
        rng = np.random.default_rng(seed)
        out_texts, out_pairs, out_labels, log = [], [], [], []
        echoed = 0
        for c, idx in enumerate(per_class):
            label = task.spec.classes[c]
            km = KMeans(n_clusters=dpc, n_init=3, random_state=int(rng.integers(2**31))).fit(vectors[idx])
            bar = progress_bar(range(dpc), desc=f"condense {label}", leave=False)
            for k in bar:
                rows = idx[km.labels_ == k]
                near = rows[np.argsort(np.linalg.norm(vectors[rows] - km.cluster_centers_[k], axis=1))[: cfg.members]]
                prompt = template.format(kind=cfg.kind, kind_one=cfg.kind.rstrip("s"), label=label, examples="\n".join(
                    show_example(texts[i], pairs[i] if is_pair else None) for i in near))
                raw = cached_generate(lm, prompt, cfg.candidates, cfg.max_new_tokens, seed * 1_000_003 + c * 1_009 + k)
                parsed = [p for p in (parse_generation(r, label, is_pair) for r in raw) if p is not None]
                members = [(texts[i], pairs[i] if is_pair else None) for i in near]
                cands = [p for p in parsed if not echoes(p, members, cfg.echo_overlap)]
                entry = {"class": label, "rows": rows.tolist(), "prompt": prompt, "raw": raw,
                         "skipped": len(raw) - len(parsed), "echoes": len(parsed) - len(cands)}
                echoed += entry["echoes"]
                bar.set_postfix(echoes_dropped=echoed)
                if not cands:  # nothing usable and new written: the cluster's central real example stands for it
                    cands, entry["fallback"] = [(texts[near[0]], pairs[near[0]] if is_pair else None)], True
                target = mean_head_gradient(learner, model, batch_of(real, torch.from_numpy(rows)),
                                            torch.full((len(rows),), c))
                # all of a cluster's candidates encoded at once, scored one by one
                proposed = learner.encode([a for a, _ in cands], [b for _, b in cands] if is_pair else None)
                scores = [float(F.cosine_similarity(head_gradient(learner, model, batch_of(proposed, torch.tensor([j])),
                                                                  torch.tensor([c])), target, dim=0))
                          for j in range(len(cands))]
                best = int(np.argmax(scores))
                out_texts.append(cands[best][0])
                out_pairs.append(cands[best][1])
                out_labels.append(c)
                log.append({**entry, "generations": [a if b is None else [a, b] for a, b in cands],
                            "scores": [round(s, 4) for s in scores], "chosen": best})
        skipped = sum(e["skipped"] for e in log)
        fallbacks = sum(e.get("fallback", False) for e in log)
        if skipped or echoed:
            progress_write(f"condense: of {sum(len(e['raw']) for e in log)} generations, skipped {skipped} as empty "
                           f"or malformed and dropped {echoed} as echoes of their prompt's real examples; {fallbacks} "
                           "clusters kept their central real example")
        return self._artifact(task, seed, kind="text", texts=out_texts, text_pairs=out_pairs if is_pair else None,
                              labels=torch.tensor(out_labels),
                              log={"llm": getattr(lm, "name", cfg.llm), "skipped_generations": skipped,
                                   "echo_generations": echoed, "fallback_clusters": fallbacks, "clusters": log})
