"""Thread counts: what the user set, else the cores other work leaves idle. Standard library only, so
the command line can decide before numpy or torch load their thread pools."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, container limits), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call on this platform
        return os.cpu_count() or 1


def idle_threads(cores: int, load: float) -> int:
    """Threads worth using when the user names none: the cores a ``load`` (busy threads besides the
    caller) leaves idle, rounded, between 1 and 8. A second thread helps only when its core is free:
    every op waits for its slowest thread, so on a busy core it only adds waiting."""
    return max(1, min(8, round(cores - load)))


def given_threads(*names: str) -> int | None:
    """The first of these environment variables that is set, as a thread count (at least 1); a value
    that is not a whole number raises ValueError naming the variable."""
    for name in names:
        value = os.environ.get(name)
        if value is not None:
            try:
                return max(1, int(value))
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a number of threads; set a whole number such as "
                                 f"{name}=1, or unset it to use the idle cores") from None
    return None
