"""textdistill: condense a labelled text dataset into a few examples per class that still train a good model.

    import textdistill as td
    task = td.get_task("mr")
    ds = td.distill(task, "herding", dpc=10, learner="minilm-frozen", seed=0)
    (r,) = td.evaluate(task, ds, learners=["minilm-frozen"], seeds=5)
"""

from .version import __version__
from .api import distill, evaluate  # noqa: E402
from .data import Task, TaskSpec, get_task, list_tasks  # noqa: E402
from .errors import TextDistillError  # noqa: E402
from .learners import Learner, get_learner, list_learners  # noqa: E402
from .methods import Distiller, get_method, list_methods  # noqa: E402
from .distilled import DistilledDataset  # noqa: E402

__all__ = ["DistilledDataset", "Distiller", "Learner", "Task", "TaskSpec", "TextDistillError", "__version__",
           "distill", "evaluate", "get_learner", "get_method", "get_task", "list_learners", "list_methods",
           "list_tasks"]
