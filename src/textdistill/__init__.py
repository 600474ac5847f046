"""textdistill: condense a labelled text dataset into a few examples per class that still train a good model."""

__version__ = "0.1.0"

from .data import Task, TaskSpec, get_task, list_tasks  # noqa: E402
from .errors import TextDistillError  # noqa: E402
from .synthetic import DistilledDataset  # noqa: E402

__all__ = ["DistilledDataset", "Task", "TaskSpec", "TextDistillError", "__version__", "get_task", "list_tasks"]
