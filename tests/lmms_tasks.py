"""lmms-eval's own task code, loaded from the installed package (``pip install --no-deps lmms-eval==0.7.3 loguru
pytz``, as scripts/setup does). A task's ``utils.py`` imports ``lmms_eval.tasks._task_utils``; the package
``lmms_eval.tasks`` itself imports ``datasets``, which is not installed, so it is registered here as a plain
package over its own folder: every module below is the installed file, run unchanged."""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import lmms_eval

TASKS = Path(lmms_eval.__file__).parent / "tasks"


def task_utils(task: str) -> types.ModuleType:
    """``lmms_eval/tasks/<task>/utils.py`` of the installed package."""
    if "lmms_eval.tasks" not in sys.modules:
        package = types.ModuleType("lmms_eval.tasks")
        package.__path__ = [str(TASKS)]
        sys.modules["lmms_eval.tasks"] = package
    return importlib.import_module(f"lmms_eval.tasks.{task}.utils")
