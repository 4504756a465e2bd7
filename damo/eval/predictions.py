"""A prediction file as every scorer reads it: parsed once, checked record by record.

Predictions come in the peer's own format where one exists (QVHighlights submission JSONL,
ActivityNet challenge JSON, E.T. Bench records with ``a``, Charades-STA txt) or in our canonical
prediction JSONL; which one is decided by the file's content. Errors name the file and line (or
record); the quirks the official evaluators tolerate are counted in ``report``.
"""
from __future__ import annotations

import json
from pathlib import Path

from damo.data.formats.common import read_text, require, to_float
from damo.data.formats.common import read_jsonl as read_jsonl_numbered
from damo.data.schema import Prediction, QuirkReport
from damo.textio import JSONTooDeep, loads

SUBSETS = ("all", "predicted")
DUPLICATES = ("error", "first", "last")


class Rows(list):
    """Prediction records plus, in ``where``, the file and line (or record) each came from."""

    def __init__(self, rows: list, where: list[str]):
        super().__init__(rows)
        self.where = where


class PredictionFile:
    """One prediction file: ``data`` is a JSON document, the :class:`Rows` of a JSONL file (or of a
    JSON list), or a ``.txt`` file's text (Charades-STA's own layout, read by its format module).

    ``duplicates`` (``error``, ``first``, ``last``) decides what an id seen twice does; kept
    duplicates and other tolerated quirks are counted in ``report``.
    """

    def __init__(self, path: str | Path, duplicates: str = "error"):
        if duplicates not in DUPLICATES:
            raise ValueError(f"duplicates must be one of {DUPLICATES}, got {duplicates!r}")
        self.path = Path(path)
        self.duplicates = duplicates
        self.report = QuirkReport()
        self.data = self._read()
        if not self.data:
            raise ValueError(f"{self.path}: holds no predictions")

    def _read(self) -> dict | Rows | str:
        """An empty file is an error. A key repeated inside one JSON object (two ``results`` entries
        for one video) follows the ``duplicates`` policy like repeated ids, counted as ``duplicate_key``."""
        path = self.path
        text = read_text(path)
        if not text.strip():
            raise ValueError(f"{path}: the prediction file is empty; write one prediction per sample")
        if path.suffix == ".txt":
            return text

        def pairs(items: list[tuple[str, object]]) -> dict:
            out: dict = {}
            for k, v in items:
                if k in out:
                    if self.duplicates == "error":
                        raise ValueError(f"{path}: key {k!r} appears twice in one JSON object; keep one, or pass "
                                         f"--duplicates first|last")
                    self.report["duplicate_key"] += 1
                    if self.duplicates == "first":
                        continue
                out[k] = v
            return out

        try:
            doc = loads(text, str(path), object_pairs_hook=pairs)
        except (json.JSONDecodeError, JSONTooDeep):
            numbered = list(read_jsonl_numbered(path))     # errors name the line
            return Rows([r for _, r in numbered], [f"{path}:{n}" for n, _ in numbered])
        if isinstance(doc, list):
            return Rows(doc, [f"{path}: record {i}" for i in range(len(doc))])
        if isinstance(doc, dict) and ({"id", "spans"} <= doc.keys() or {"qid", "pred_relevant_windows"} <= doc.keys()):
            return Rows([doc], [f"{path}:1"])                # a one-line JSONL file
        return doc

    def rows(self) -> Rows | None:
        """The records, if the file holds a list of them."""
        return self.data if isinstance(self.data, Rows) else None

    def is_canonical(self) -> bool:
        rows = self.rows()
        return bool(rows) and isinstance(rows[0], dict) and {"id", "spans"} <= rows[0].keys()

    def keep(self, seen: dict, key, where: str, what: str) -> bool:
        """Whether a record with ``key`` is kept under the ``duplicates`` policy (``first`` keeps the first)."""
        if key not in seen:
            seen[key] = where
            return True
        if self.duplicates == "error":
            raise ValueError(f"{where}: {what} {key!r} appears again (first at {seen[key]}); keep one prediction "
                             f"per sample, or pass --duplicates first|last")
        self.report["duplicate_id"] += 1
        return self.duplicates == "last"

    def spans(self, value: object, where: str, width: tuple[int, ...] = (2, 3)) -> list[list[float]]:
        """Checked spans: a list of ``[start, end]`` / ``[start, end, score]`` of finite numbers.

        A span with end < start is kept as given and counted as ``pred_reversed``: every reproduced
        evaluator gives it IoU 0 (its intersection with anything is empty), and so do we.
        """
        if not isinstance(value, list):
            raise ValueError(f"{where}: spans must be a list of [start, end] pairs, got {type(value).__name__}")
        out = []
        for sp in value:
            if not isinstance(sp, (list, tuple)) or len(sp) not in width:
                raise ValueError(f"{where}: a span must be {' or '.join(map(str, width))} numbers "
                                 f"[start, end{', score' if 3 in width else ''}], got {sp!r}")
            vals = [to_float(x, name, where) for x, name in zip(sp, ("span start", "span end", "span score"))]
            if vals[1] < vals[0]:
                self.report["pred_reversed"] += 1
            out.append(vals)
        return out

    def canonical(self) -> dict[str, Prediction]:
        """Canonical prediction rows, each checked; errors name the file and line."""
        out: dict[str, Prediction] = {}
        seen: dict = {}
        rows = self.data
        for r, where in zip(rows, rows.where):
            require(r, ("id", "spans"), where)
            answer = r.get("answer")
            if answer is not None and not isinstance(answer, str):
                raise ValueError(f"{where}: 'answer' must be text, got {type(answer).__name__}")
            pid = str(r["id"])
            spans = self.spans(r["spans"], where)
            if self.keep(seen, pid, where, "prediction id"):
                out[pid] = Prediction(id=pid, spans=spans, answer=answer, tube=r.get("tube"))
        return out

