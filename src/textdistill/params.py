"""``Params``: a model's parameters by name, what the functional forward of every learner and the training loop pass
around. A leaf, so that learners (which take it) and the loop (which takes learners) need not import each other."""

from __future__ import annotations

import torch

Params = dict[str, torch.Tensor]
