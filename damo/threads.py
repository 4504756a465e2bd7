"""Thread counts, one rule for every command: ``$DAMO_THREADS`` if set, else the cores idle right now.

"Idle right now" is a short sample of the usable cores' idle time (Linux's ``/proc/stat``), not the
load average: the 1-minute average still counts a job that ended seconds ago (the setup's own pip
install, say) as a busy core. A second thread helps only when its core is free: every op waits for
its slowest thread, so on a busy core it only adds waiting. Standard library only, so the command
line can decide before numpy or torch load their thread pools.
"""
from __future__ import annotations

import os
import time

MAX_THREADS = 8
WINDOW_S = 0.2          # the idle sample: 20 clock ticks per core at Linux's 100 Hz
_last: tuple[float, float] | None = None     # (time.monotonic() when taken, idle cores) of the last sample


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, container limits), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call on this platform
        return os.cpu_count() or 1


def threads_for(cores: int, idle: float) -> int:
    """The rule: the ``idle`` cores rounded half up, at least 1, never more than the ``cores`` this
    process may use nor :data:`MAX_THREADS` (a tiny model's ops gain nothing from more)."""
    return max(1, min(MAX_THREADS, cores, int(idle + 0.5)))


def cpu_ticks(stat: str, cpus: set[int]) -> dict[int, tuple[int, int]]:
    """``(idle, total)`` clock ticks of each of ``cpus`` from the text of ``/proc/stat``; idle counts
    iowait too (a core waiting on a disk is free to compute), total leaves out guest time, which
    user time already holds."""
    out = {}
    for line in stat.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(x) for x in fields[:8]]      # user nice system idle iowait irq softirq steal
            out[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
    return out


def idle_between(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> float:
    """Idle cores between two :func:`cpu_ticks` readings: each core's idle share of its ticks, summed
    (a core that counted no tick at all is taken as idle)."""
    idle = 0.0
    for cpu, (i1, t1) in after.items():
        i0, t0 = before[cpu]
        idle += (i1 - i0) / (t1 - t0) if t1 > t0 else 1.0
    return idle


def sample_idle(window: float = WINDOW_S) -> float:
    """Cores idle during the next ``window`` seconds among those this process may use. Where
    ``/proc/stat`` cannot be read: the cores the 1-minute load average leaves idle (or all of them)."""
    try:
        cpus = os.sched_getaffinity(0)
        with open("/proc/stat") as f:
            before = cpu_ticks(f.read(), cpus)
        time.sleep(window)
        with open("/proc/stat") as f:
            after = cpu_ticks(f.read(), cpus)
        if after:
            return idle_between(before, after)
    except (AttributeError, OSError):   # not Linux
        pass
    try:
        return usable_cores() - os.getloadavg()[0]
    except (AttributeError, OSError):
        return usable_cores()


def idle_cores(max_age: float = 0.0) -> float:
    """Cores idle now (:func:`sample_idle`); a sample younger than ``max_age`` seconds is reused, so a
    caller that asks often (the decoder, once per file) does not wait ``WINDOW_S`` every time."""
    global _last
    if _last is None or time.monotonic() - _last[0] > max_age:
        idle = sample_idle()
        _last = (time.monotonic(), idle)
    return _last[1]


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


def threads(max_age: float = 0.0) -> int:
    """Threads to use now: ``$DAMO_THREADS`` if set (it always wins), else the idle cores by
    :func:`threads_for`. ``max_age`` as in :func:`idle_cores`."""
    given = given_threads("DAMO_THREADS")
    return given if given is not None else threads_for(usable_cores(), idle_cores(max_age))


def use_threads() -> int:
    """Choose the threads now (:func:`threads`) and give them to torch; returns the count. A long
    command calls it again when each stage starts, as other work may have started or ended."""
    import torch

    n = threads()
    torch.set_num_threads(n)
    return n
