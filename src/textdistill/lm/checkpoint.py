"""Checkpoints of a generator in training: weights, optimiser state, loss curve and pool, written per finished
outer loop (progress.json last, pointing at them), so a killed run resumes from its last finished loop."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_write
from .generator import Generator


def save_checkpoint(folder: Path, gen: Generator, opt: torch.optim.Optimizer | None, outer: int,
                    history: list[float], pool: list) -> None:
    """Weights and optimiser state (none once finished) under the step's name, then progress.json, written last,
    points at them."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in gen.model.state_dict().items()}
    atomic_write(folder / f"generator-{outer}.safetensors", lambda p: save_file(_untied(weights), str(p)))
    if opt is not None:
        atomic_write(folder / f"optimizer-{outer}.pt", lambda p: torch.save(opt.state_dict(), p))
    atomic_write(folder / "progress.json", lambda p: p.write_text(json.dumps(
        {"outer": outer, "history": history, "pool": pool})))
    for old in folder.glob("*-*.*"):
        if old.stem.rsplit("-", 1)[1] != str(outer):
            old.unlink()


def load_checkpoint(folder: Path, gen: Generator, opt: torch.optim.Optimizer, device: str) -> dict:
    """Restore the last finished outer loop (weights, optimiser, pool, loss curve); a fresh start if none."""
    progress = folder / "progress.json"
    if not progress.exists():
        return {"outer": 0, "history": [], "pool": []}
    state = json.loads(progress.read_text())
    gen.model.load_state_dict(load_file(str(folder / f"generator-{state['outer']}.safetensors"), device=device),
                              strict=False)  # tied weights are stored once
    if (folder / f"optimizer-{state['outer']}.pt").exists():  # absent once finished
        opt.load_state_dict(torch.load(folder / f"optimizer-{state['outer']}.pt", map_location=device,
                                       weights_only=True))
    state["pool"] = [(t, p) for t, p in state["pool"]]
    return state


def _untied(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied input/output embeddings): keep the first of each."""
    seen, out = set(), {}
    for k, v in weights.items():
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            out[k] = v
    return out
