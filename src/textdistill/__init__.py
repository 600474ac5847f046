"""textdistill: condense a labelled text dataset into a few examples per class that still train a good model.

    import textdistill as td
    task = td.get_task("mr")
    ds = td.distill(task, "herding", dpc=10, learner="minilm-frozen", seed=0)
    (r,) = td.evaluate(task, ds, learners=["minilm-frozen"], seeds=5)
"""

from __future__ import annotations

import importlib

from .version import __version__
from .errors import TextDistillError  # noqa: E402

# The API names load their modules (torch, transformers, every method) on first use, so that `textdistill
# --version`, `--help` and `list` answer at once.
_WHERE = {"distill": "api", "evaluate": "api", "fit_on_set": "api", "load_task_of": "api", "audit": "api",
          "decode": "api", "TextDistillWarning": "errors", "Task": "data", "TaskSpec": "data", "get_task": "data",
          "list_tasks": "data", "Learner": "learners", "get_learner": "learners", "list_learners": "learners",
          "Distiller": "methods", "get_method": "methods", "list_methods": "methods",
          "DistilledDataset": "distilled"}

__all__ = ["DistilledDataset", "Distiller", "Learner", "Task", "TaskSpec", "TextDistillError", "TextDistillWarning",
           "__version__", "audit", "decode", "distill", "evaluate", "fit_on_set", "get_learner", "get_method",
           "get_task", "list_learners", "list_methods", "list_tasks", "load_task_of"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # once: later lookups find it directly
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
