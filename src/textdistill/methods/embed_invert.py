"""embed-invert (Tao et al. 2024): distil in a sentence-embedding space, then write each learned vector as text.

A learned-vector method (``dm``, ``mtt`` or ``dc`` on a frozen-encoder learner such as ``minilm-frozen``)
gives target vectors per class; an inverter turns each into a sentence, so the set is readable and any
learner trains on it. ``nearest`` takes the closest real training sentence of the class (a coreset steered
by distillation); ``search`` lets a language model propose sentences, prompted with the class and the real
sentences nearest the target, keeps the candidate whose vector is closest, and repeats with the best as new
context: it never ends further from the target than the nearest real sentence it starts from; ``trained`` writes
from the vector itself, through an inversion model trained on the task's sentences (``lm/inverter.py``), and
keeps the closest of its greedy and sampled sentences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import yaml

from ..data import Task
from ..errors import ConfigError
from ..learners import FeatureLearner, Learner, unit
from ..distilled import DistilledDataset, Provenance
from ..progress import bar as progress_bar
from .base import Distiller, MethodConfig, get_method, label_probe, register_method

if TYPE_CHECKING:
    from ..lm.inverter import InverterSettings

SPACES, INVERTERS = ("dm", "mtt", "dc"), ("nearest", "search", "trained")
PROMPT = ("Here are {kind} labelled \"{label}\":\n{examples}\nWrite one new {kind_one} labelled \"{label}\", "
          "similar to these. Reply with the sentence only.")


@dataclass
class EmbedInvertConfig(MethodConfig):
    space: str = field(default="dm", metadata={"help": "the method that learns the vectors: dm, mtt or dc"})
    space_options: str = field(default="", metadata={"help": "its options, e.g. 'iterations=200,outer_lr=0.05'"})
    inverter: str = field(default="nearest", metadata={"help": "nearest (real sentence), search (LM proposals) or "
                                                                 "trained (an inversion model)"})
    lm: str = field(default="smollm2-135m", metadata={"help": "the language model of the search and trained inverters"})
    candidates: int = field(default=8, metadata={"ge": 1, "help": "search: sentences proposed per round; trained: "
                                                                  "sentences written per vector (greedy + sampled)"})
    rounds: int = field(default=2, metadata={"ge": 1, "help": "search: propose-and-keep rounds per vector"})
    context: int = field(default=4, metadata={"ge": 1, "help": "search: real sentences in the prompt"})
    max_new_tokens: int = field(default=40, metadata={"ge": 4, "help": "search, trained: tokens per sentence"})
    inverter_steps: int = field(default=400, metadata={"ge": 1, "help": "trained: training steps (cached per task)"})
    inverter_batch: int = field(default=8, metadata={"ge": 1, "help": "trained: training sentences per step"})
    inverter_lr: float = field(default=1e-3, metadata={"gt": 0, "help": "trained: AdamW learning rate"})
    prefix_tokens: int = field(default=4, metadata={"ge": 1, "help": "trained: LM input embeddings per vector"})
    lora_rank: int = field(default=8, metadata={"ge": 0, "help": "trained: LoRA rank of the LM (0: train it all)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.space not in SPACES:
            raise ConfigError(f"space must be one of {', '.join(SPACES)}, not {self.space!r}")
        if self.inverter not in INVERTERS:
            raise ConfigError(f"inverter must be one of {', '.join(INVERTERS)}, not {self.inverter!r}")
        space = self.space_method()  # bad pass-through options fail now, not after the distillation
        if getattr(space.config, "dp_epsilon", 0):
            raise ConfigError(f"embed-invert: space_options sets dp_epsilon for {self.space}, but only the vectors "
                              "would be private: writing them as text reads the private training sentences "
                              "outside the mechanism (the nearest real sentences, the search's prompts, the "
                              "inverter's training data, the label probe); use dm or dc with dp_epsilon directly")

    def inverter_settings(self) -> "InverterSettings":
        from ..lm.inverter import InverterSettings

        return InverterSettings(lm=self.lm, prefix=self.prefix_tokens, lora_rank=self.lora_rank,
                                steps=self.inverter_steps, batch=self.inverter_batch, lr=self.inverter_lr)

    def space_method(self) -> Distiller:
        options = {}
        for part in filter(None, (p.strip() for p in self.space_options.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise ConfigError(f"space_options: {part!r} is not key=value")
            options[key.strip()] = yaml.safe_load(value)
        return get_method(self.space, **options)


def search(target: np.ndarray, start: str, context: list[str], propose: Callable[[list[str], int], list[str]],
           embed: Callable[[list[str]], np.ndarray], rounds: int) -> tuple[str, float]:
    """Hypothesis and correct: the best sentence (by cosine to ``target``) among ``start`` and the proposals of
    ``rounds`` rounds, each prompted with the best so far and the rest of the context."""
    best, best_cos = start, float(unit(embed([start]))[0] @ target)
    for r in range(rounds):
        cands = [c for c in propose([best] + [s for s in context if s != best][: len(context) - 1], r) if c.strip()]
        if not cands:
            continue
        cos = unit(embed(cands)) @ target
        i = int(cos.argmax())
        if cos[i] > best_cos:
            best, best_cos = cands[i], float(cos[i])
    return best, best_cos


@register_method
class EmbedInvert(Distiller):
    name = "embed-invert"
    description = "vectors learned in a sentence space (dm, mtt, dc), written back as text (nearest or LM search)"
    Config = EmbedInvertConfig
    uses_device = True

    def run(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        cfg = self.config
        if not isinstance(learner, FeatureLearner):
            raise ConfigError(f"embed-invert learns vectors in a frozen sentence space: use a learner such as "
                              f"minilm-frozen, not {learner.name!r}")
        vectors = cfg.space_method().distill(task, dpc, learner, seed=seed, device=self.device)
        targets = unit(vectors.tensors["features"].float().numpy())
        hard = vectors.hard_labels.numpy()
        texts, pairs, labels = task.columns("train")
        if pairs is not None:
            raise ConfigError("embed-invert writes single sentences; pair tasks are not supported yet")
        real = unit(learner.sentence_vectors(texts))
        labels = np.asarray(labels)
        lm = inverter = None
        if cfg.inverter == "search":
            from ..lm import cached_generate, first_line, load_lm

            lm = load_lm(cfg.lm, self.device)
        elif cfg.inverter == "trained":
            from ..lm.inverter import inverter_key, train_inverter

            settings = cfg.inverter_settings()
            inverter = train_inverter(real, texts, settings, inverter_key(task.fingerprint, learner.describe(), settings))
        out_texts, fidelity, nearest_cos = [], [], []
        for c in range(task.num_classes):
            rows, pool = np.flatnonzero(hard == c), np.flatnonzero(labels == c)
            used: set[int] = set()
            for i in progress_bar(rows, desc=f"embed-invert {task.spec.classes[c]}", leave=False):
                cos = real[pool] @ targets[i]
                order = [int(pool[j]) for j in np.argsort(-cos)]
                start = next(j for j in order if j not in used)  # a real sentence appears once per class
                used.add(start)
                nearest_cos.append(float(real[start] @ targets[i]))
                step_seed = seed * 1_000_003 + int(i) * 101
                if inverter is not None:
                    (written,) = inverter.write(torch.from_numpy(targets[i : i + 1]), cfg.candidates,
                                                cfg.max_new_tokens, step_seed)
                    written = [w for w in written if w] or [texts[start]]  # nothing written: the nearest real one
                    cos = unit(learner.sentence_vectors(written, cache=False)) @ targets[i]
                    out_texts.append(written[int(cos.argmax())])
                    fidelity.append(float(cos.max()))
                    continue
                if lm is None:
                    out_texts.append(texts[start])
                    fidelity.append(nearest_cos[-1])
                    continue
                name = task.spec.classes[c]

                def propose(context: list[str], r: int) -> list[str]:
                    prompt = PROMPT.format(kind="sentences", kind_one="sentence", label=name,
                                           examples="\n".join(f"- {s}" for s in context))
                    return [first_line(t) for t in cached_generate(lm, prompt, cfg.candidates, cfg.max_new_tokens,
                                                                   step_seed + r)]

                best, best_cos = search(targets[i], texts[start], [texts[j] for j in order[: cfg.context]],
                                        propose, lambda s: learner.sentence_vectors(s, cache=False), cfg.rounds)
                out_texts.append(best)
                fidelity.append(best_cos)
        order = np.concatenate([np.flatnonzero(hard == c) for c in range(task.num_classes)])
        # does a probe trained on the real data read each written sentence as the class it was written for?
        agree = label_probe(task, learner).predict(learner.sentence_vectors(out_texts, cache=False)) == hard[order]
        log = {"space": {"method": vectors.method, "config": vectors.config, "fingerprint": vectors.fingerprint()}}
        made = Provenance(fidelity={"cosine_to_target": [round(x, 4) for x in fidelity],
                                    "nearest_real_cosine": [round(x, 4) for x in nearest_cos],
                                    "mean_cosine_to_target": float(np.mean(fidelity)),
                                    "mean_nearest_real_cosine": float(np.mean(nearest_cos)),
                                    "probe_label_agreement": float(agree.mean())})
        return self._artifact(task, seed, kind="text", texts=out_texts, labels=torch.from_numpy(hard[order]).long(),
                              log=log, provenance=made)
