"""DiLM's generator: a causal LM that writes examples of a class after that class's start token.

"<class_c> text <eos>" (pair tasks join their two texts with "<sep>"); a class token starts as the embedding of
its class name. Per-example generation losses (differentiable, for gradient matching) and seeded nucleus
sampling, with optional classifier-free guidance against the other classes' start tokens.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from ..distilled import DistilledDataset, write_folder
from ..errors import DataError, ResourceMissing
from ..progress import bar as progress_bar
from ..resources import resolve_model
from ..seeds import torch_rng_kept

SEP = "<sep>"
META = "textdistill-generator.json"


class Generator:
    """A causal LM with one start token per class: per-example generation losses and class-conditional samples."""

    def __init__(self, model, tokenizer, num_classes: int, max_length: int) -> None:
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.class_ids = tokenizer.convert_tokens_to_ids([f"<class_{c}>" for c in range(num_classes)])
        self.sep_id = tokenizer.convert_tokens_to_ids(SEP)

    @classmethod
    def pretrained(cls, name: str, classes: list[str], max_length: int) -> "Generator":
        """A hub/local causal LM with the class, separator, end and padding tokens added."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_model(name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        except OSError as e:
            raise ResourceMissing(f"cannot load generator {name!r} ({e}); offline, use smollm2-135m or a local path") from None
        return cls.extended(model, tokenizer, classes, max_length)

    @classmethod
    def extended(cls, model, tokenizer, classes: list[str], max_length: int) -> "Generator":
        """Add the tokens; a new class token starts as the mean embedding of its class name's tokens, so the
        pretrained LM is class-conditional from the first step (a copy of one start token for every class left
        the classes indistinguishable after a short stage 1 on CPU)."""
        if tokenizer.eos_token is None:
            tokenizer.add_special_tokens({"eos_token": "<eos>"})
        if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})  # padding must not look like the end
        known = len(tokenizer)
        tokenizer.add_tokens([SEP] + [f"<class_{c}>" for c in range(len(classes))])  # kept if already there
        with torch.random.fork_rng():  # the new rows start from a fixed seed: the same generator every time
            torch.manual_seed(0)
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        gen = cls(model, tokenizer, len(classes), max_length)
        table = model.get_input_embeddings().weight
        with torch.no_grad():
            for token, name in zip(gen.class_ids, classes):
                words = tokenizer(f" {name}", add_special_tokens=False)["input_ids"]
                if token >= known and words:
                    table[token] = table[words].mean(0)
        return gen

    @classmethod
    def load(cls, path: str | Path) -> "Generator":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        meta = json.loads((Path(path) / META).read_text())
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        return cls(model, AutoTokenizer.from_pretrained(str(path)), meta["num_classes"], meta["max_length"])

    def save(self, path: str | Path, artifact: DistilledDataset | None = None, **meta) -> Path:
        """An HF folder plus the class-token metadata (and a ``generator`` artifact's manifest), written whole."""
        def write(folder: Path) -> None:
            self.model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)
            (folder / META).write_text(json.dumps({"num_classes": len(self.class_ids), "max_length": self.max_length,
                                                   **meta}, indent=1))
            if artifact is not None:
                artifact.write_files(folder)

        return write_folder(path, write)

    def to(self, device: str) -> "Generator":
        self.model.to(device)
        return self

    def encode(self, labels: list[int], texts: list[str], pairs: list[str] | None) -> dict[str, torch.Tensor]:
        """[class token] text [<sep> pair] [eos], right-padded; ``targets`` is -100 at padding."""
        joined = texts if pairs is None else [f"{a} {SEP} {b}" for a, b in zip(texts, pairs)]
        body = self.tokenizer(joined, add_special_tokens=False, truncation=True, max_length=self.max_length - 2)
        rows = [[self.class_ids[y]] + ids + [self.tokenizer.eos_token_id] for y, ids in zip(labels, body["input_ids"])]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        device = self.model.device
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                "targets": ids.masked_fill(mask == 0, -100).to(device)}

    def losses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean next-token negative log-likelihood of each example [n] (the class token is given, not predicted)."""
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = batch["targets"][:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        nll = nll.view(targets.shape)
        return nll.sum(1) / (targets != -100).sum(1)

    @torch.no_grad()
    def sample(self, label: int, n: int, *, pairs: bool, top_p: float, batch: int, seed: int,
               guidance: float = 1.0, progress: bool = True,
               keep_rng: bool = True) -> tuple[list[str], list[str] | None]:
        """``n`` non-empty examples of class ``label`` (nucleus sampling, seeded); pairs split at <sep>.

        ``guidance`` > 1: classifier-free guidance (Sanchez et al. 2023), the next-token log-probabilities
        pushed away from those after another class's start token (the other classes in turn), which
        strengthens a weakly class-conditional generator.

        torch's global random state is left as it was; ``keep_rng=False`` leaves it where the sampling ended,
        for a caller whose next draws (a generator's dropout) have always continued from there."""
        with torch_rng_kept(self.model.device) if keep_rng else nullcontext():
            torch.manual_seed(seed)
            return self._sample(label, n, pairs, top_p, batch, guidance, progress)

    def _sample(self, label: int, n: int, pairs: bool, top_p: float, batch: int, guidance: float,
                progress: bool) -> tuple[list[str], list[str] | None]:
        self.model.eval()
        banned = [[i] for i in self.class_ids] + ([] if pairs else [[self.sep_id]])
        others = torch.tensor([t for c, t in enumerate(self.class_ids) if c != label], device=self.model.device)
        texts: list[str] = []
        seconds: list[str] = []
        tries = 0
        bar = progress_bar(total=n, desc=f"generate class {label}", leave=False, disable=not progress)
        while len(texts) < n:
            tries += 1
            if tries > 10 + 2 * (n // batch):
                raise DataError(f"dilm: the generator wrote too few usable examples for class {label} "
                                f"({len(texts)} of {n}); train stage 1 longer (lm_steps)")
            size = min(batch, 2 * (n - len(texts)) + 1)
            start = torch.full((size, 1), self.class_ids[label], device=self.model.device)
            contrast = {} if guidance == 1 else {"guidance_scale": guidance,
                                                 "negative_prompt_ids": others[torch.arange(size) % len(others), None]}
            out = self.model.generate(start, attention_mask=torch.ones_like(start), do_sample=True, top_p=top_p,
                                      top_k=0, max_new_tokens=self.max_length - 1, bad_words_ids=banned,
                                      pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=self.tokenizer.eos_token_id, **contrast)
            for text in self.tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True):
                parts = [p.strip() for p in text.split(SEP)]
                if len(texts) < n and parts[0] and (not pairs or len(parts) >= 2 and parts[1]):
                    texts.append(parts[0])
                    seconds.append(parts[1] if pairs else "")
                    bar.update()
        bar.close()
        return texts, seconds if pairs else None
