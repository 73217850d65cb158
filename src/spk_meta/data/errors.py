"""Errors of the data layer (one module, so that every data module can raise them)."""


class TaskDataError(ValueError):
    """A task database cannot be used; the message names the file and the problem."""


class TaskSplitMismatch(TaskDataError):
    """A saved split file is unreadable or does not belong to the tasks of this run."""
