"""Benchmark suites: tasks x methods x examples per class x learners x seeds, from one YAML file.

Every finished cell is one JSON file under ``OUT/cells`` named by the fingerprint of its configuration, so an
interrupted run (or one split into shards over several processes) resumes without redoing finished cells;
distilled sets are saved under ``OUT/sets`` and evaluations go through the shared evaluation cache.

Each module imports only those below it: ``suite`` (the YAML schema) <- ``cells`` (the plan, the keys) <- ``runner``
(one cell's work) <- ``executors`` (where cells run); ``cells`` <- ``cost`` (what cells cost); ``driver``
(``run_suite``, ``collect``) over them all.
"""

from .cells import Cell, plan
from .cost import CostModel, cell_seconds, suite_cost
from .driver import collect, run_suite
from .executors import check_set_visible
from .runner import Runner
from .suite import load_suite, parse_suite

__all__ = ["Cell", "CostModel", "Runner", "cell_seconds", "check_set_visible", "collect", "load_suite",
           "parse_suite", "plan", "run_suite", "suite_cost"]
