"""condense (after CondenseLM, Shen et al. 2025): an instruction-following LM condenses clusters of real
examples into new ones, and a learning-signal match decides which generation represents each cluster.

Per class, the real examples are clustered (k-means in the learner's sentence space, ``dpc`` clusters); the
LM is shown the members nearest each centroid and asked for new examples of the class; each candidate is
scored by how well the loss gradient it gives a learner (its head, freshly initialised and seeded) aligns
with the mean gradient of the cluster's real members, and the best candidate stands for the cluster. This
is our reading of the paper's reward matching, not its exact rule (see docs/results.md). Every prompt and
generation is kept in the set's log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import Task
from ..errors import ConfigError
from ..learners import Learner
from ..synthetic import DistilledDataset
from ..train import batch_of
from . import Distiller, MethodConfig, register_method
from .space import real_inputs

PROMPT = ("Here are examples of {kind} labelled \"{label}\":\n{examples}\nWrite one new {kind_one} labelled "
          "\"{label}\" that condenses what these have in common, in the same style. Reply with the text only.")


@dataclass
class CondenseConfig(MethodConfig):
    llm: str = field(default="smollm2-135m", metadata={"help": "local or hub causal LM, or openai:URL/MODEL"})
    members: int = field(default=5, metadata={"ge": 1, "help": "real examples of a cluster shown in its prompt"})
    candidates: int = field(default=4, metadata={"ge": 1, "help": "generations per cluster"})
    max_new_tokens: int = field(default=48, metadata={"ge": 4, "help": "tokens per generation"})
    kind: str = field(default="sentences", metadata={"help": "what the examples are, in the prompt (plural)"})


def head_gradient(learner: Learner, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                  labels: torch.Tensor) -> torch.Tensor:
    """The mean loss gradient of ``inputs`` with respect to the learner's head, flattened."""
    names = learner.head_parameter_names(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    params.update({k: params[k].clone().requires_grad_(True) for k in names})
    params.update(dict(model.named_buffers()))
    loss = F.cross_entropy(learner.forward(model, params, inputs), labels)
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, [params[k] for k in names])])


@register_method
class Condense(Distiller):
    name = "condense"
    description = "an instruct LM condenses clusters of real examples; gradient alignment picks the generations"
    Config = CondenseConfig

    def distill(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        from sklearn.cluster import KMeans

        from ..lm import get_lm
        from . import class_indices

        cfg = self.config
        texts, pairs, labels = task.columns("train")
        if pairs is not None:
            raise ConfigError("condense writes single texts; pair tasks are not supported yet")
        per_class = class_indices(labels, task.spec.classes, dpc)
        vectors = learner.sentence_vectors(texts)
        real, _, _ = real_inputs(task, learner)  # encoded once; clusters take rows of it
        lm = get_lm(cfg.llm)
        model = learner.build(task.num_classes, seed).eval()
        rng = np.random.default_rng(seed)
        out_texts, out_labels, log = [], [], []
        for c, idx in enumerate(per_class):
            km = KMeans(n_clusters=dpc, n_init=3, random_state=int(rng.integers(2**31))).fit(vectors[idx])
            for k in tqdm(range(dpc), desc=f"condense {task.spec.classes[c]}", leave=False):
                rows = idx[km.labels_ == k]
                near = rows[np.argsort(np.linalg.norm(vectors[rows] - km.cluster_centers_[k], axis=1))[: cfg.members]]
                prompt = PROMPT.format(kind=cfg.kind, kind_one=cfg.kind.rstrip("s"), label=task.spec.classes[c],
                                       examples="\n".join(f"- {texts[i]}" for i in near))
                cands = [t for t in lm.generate(prompt, cfg.candidates, cfg.max_new_tokens,
                                                seed=seed * 1_000_003 + c * 1_009 + k) if t.strip()]
                cands = cands or [texts[near[0]]]  # nothing usable written: the cluster's central example stands
                target = head_gradient(learner, model, batch_of(real, torch.from_numpy(rows)),
                                       torch.full((len(rows),), c))
                proposed = learner.encode(cands)  # all of a cluster's candidates at once
                scores = [float(F.cosine_similarity(head_gradient(learner, model, batch_of(proposed, torch.tensor([j])),
                                                                  torch.tensor([c])), target, dim=0))
                          for j in range(len(cands))]
                best = int(np.argmax(scores))
                out_texts.append(cands[best])
                out_labels.append(c)
                log.append({"class": task.spec.classes[c], "rows": rows.tolist(), "prompt": prompt,
                            "generations": cands, "scores": [round(s, 4) for s in scores], "chosen": best})
        return self._artifact(task, seed, kind="text", texts=out_texts, labels=torch.tensor(out_labels),
                              log={"llm": getattr(lm, "name", cfg.llm), "clusters": log})
