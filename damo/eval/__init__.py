"""Evaluation. :data:`BENCHMARKS` is the one list of the benchmarks ``damo eval --task`` scores: one module
per benchmark in this package, each holding one :class:`~damo.eval.benchmark.Benchmark` (its reader,
scorer, answer parsers and options) named ``BENCHMARK``, and one line here."""
from __future__ import annotations

from damo.eval import activitynet_captions, charades_sta, didemo, etbench, qvhighlights, tacos, timelens, youcook2
from damo.eval.benchmark import Benchmark

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    charades_sta.BENCHMARK,
    qvhighlights.BENCHMARK,
    activitynet_captions.BENCHMARK,
    youcook2.BENCHMARK,
    etbench.BENCHMARK,
    didemo.BENCHMARK,
    tacos.BENCHMARK,
    timelens.BENCHMARK,
)}
