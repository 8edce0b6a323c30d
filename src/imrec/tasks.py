"""The table of tasks: which package serves a task a dataset or a checkpoint declares.

:mod:`imrec.api` dispatches through it, and so do the layers below the API that meet saved
models of either task (:mod:`imrec.deploy`: export and runtime). Each task package offers the
same names (see :mod:`imrec.classify`); its ``export`` module holds what the bundle, the parity
gate and the runtime need from it. Packages are imported on first use, so a classification
run never loads the detection code (nor torchvision).

Example:
    >>> task_package("detect").TASK
    'detect'
    >>> task_export({"task": "classify"}).outputs({})
    ['logits']
"""

from __future__ import annotations

from types import ModuleType

TASKS = ("classify", "detect")


def task_package(task: str) -> ModuleType:
    """The package of ``task``: :mod:`imrec.classify` or :mod:`imrec.detect`."""
    if task == "classify":
        from imrec import classify

        return classify
    if task == "detect":
        from imrec import detect

        return detect
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def task_export(meta: dict) -> ModuleType:
    """The export module of the task a checkpoint's metadata (or a manifest) declares."""
    return task_package(meta.get("task", "classify")).export
