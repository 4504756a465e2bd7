"""The Python API: ``damo.load(path).ground(video, query)``.

:meth:`Grounder.ground` returns the JSON-ready answer; :meth:`Grounder.explain` returns the same
answer with what a timeline picture needs (frame thumbnails and each evidence token's score
curve); :meth:`Grounder.ground_batch` runs many (video, query) requests and turns every bad
item into a failure record instead of stopping.

A request walks api -> processor -> media -> model -> processor: the query is checked against
the processor's limits before anything is decoded, the clip is decoded at the vision tower's
input size through the media disk cache (deliberately not memoised in memory: a long-lived
grounder would otherwise keep every video it has seen), and the pipeline's batched
:meth:`~damo.pipeline.DamoPipeline.answer` (the processor's prompt, the model's generation on its
device, the processor's decoding) answers.
"""
from __future__ import annotations

import json
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout    # the built-in TimeoutError only from Python 3.11
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from tqdm import tqdm

from damo import card as model_card
from damo.data.dataset import VIDEO_SUFFIXES, ClipLoader
from damo.data.schema import QuirkReport, clean_spans, round_span
from damo.media import MediaError
from damo.model.modeling_damo import DamoModel
from damo.model.presets import checkpoint_type
from damo.pipeline import DamoPipeline

if TYPE_CHECKING:
    from damo.model.vlm import VideoLLM
from damo.spans import span_iou
from damo.textio import line_too_long, loads, printable, read_lines

MAX_NEW_TOKENS = 48


def check_query(query: object) -> str:
    """The query as a clean string, or ValueError saying what to ask instead."""
    if not isinstance(query, str):
        raise ValueError(f"the query must be text, got {type(query).__name__}")
    if not query.strip():
        raise ValueError("the query is empty; ask a question about the video, e.g. \"when does the door open?\"")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as e:
        # a lone surrogate: "\ud800" in JSON, or bytes that are not UTF-8 on the command line
        raise ValueError(f"the query is not valid Unicode (character {e.start + 1} is "
                         f"{query[e.start].encode('utf-8', 'surrogatepass')!r}, half of a pair or an undecodable "
                         "byte); write the question as UTF-8 text") from None
    return query.strip()


_SPAN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*-\s*(\d+(?:\.\d*)?|\.\d+)\s*$")


def parse_spans(text: str) -> list[list[float]]:
    """``"s-e[,s-e...]"`` (seconds) -> ``[[s, e], ...]``; order inside a pair is kept as written."""
    spans = []
    for part in text.split(","):
        m = _SPAN.match(part)
        if not m:
            raise ValueError(f"cannot read the span {part.strip()!r} in {text!r}; write spans in seconds as "
                             "start-end, comma-separated, e.g. \"3.5-7,12-15\"")
        spans.append([float(m.group(1)), float(m.group(2))])
    return spans


def check_truth(spans: list, duration: float) -> tuple[list[list[float]], dict[str, int]]:
    """Ground-truth spans cleaned against the decoded duration, with a count of every fix.

    The policies are the canonical schema's (:func:`damo.data.schema.clean_spans`): reversed pairs
    are swapped, ends past the duration are clipped, spans starting after the end are dropped.
    """
    rows = []
    for sp in spans:
        if not isinstance(sp, (list, tuple)) or len(sp) < 2:
            raise ValueError(f"a ground-truth span must be [start, end] in seconds, got {sp!r}")
        try:
            rows.append([float(sp[0]), float(sp[1])])
        except (TypeError, ValueError):
            raise ValueError(f"a ground-truth span must hold two numbers (seconds), got {sp!r}") from None
    report = QuirkReport()
    clean = clean_spans(rows, duration, report)
    return clean, dict(report)


@dataclass
class Grounding:
    """One grounded answer plus the per-frame evidence behind it."""
    video: str
    query: str
    answer: str
    spans: list[list[float]]            # [start, end, score], best first
    evidence: list[list[float]]         # [start, end, score] of the pure-grounding stage
    duration: float
    times: np.ndarray                   # (T,) seconds of each sampled frame
    scores: list[np.ndarray] = field(default_factory=list)   # one (T,) curve per answer <evi>
    frames: np.ndarray | None = None    # (T, h, w, 3) uint8 decoded frames, for thumbnails
    threshold: float = 0.6              # spans keep frames scoring >= threshold x the curve's max
    tube: dict | None = None            # where and when: {"span", "boxes": {time: [x0, y0, x1, y1]}} (box-token models)
    model: dict = field(default_factory=lambda: {"trained_on": "unknown"})   # the model's card (damo.card)
    warning: str | None = None          # a procedural-only model asked about a real video

    def to_dict(self) -> dict:
        """The JSON shape of :meth:`Grounder.ground` (plus ``tube`` when the answer placed a box, and
        ``warning`` when a model trained only on procedural videos was asked about a real one)."""
        rounded = [(*round_span(s, e, self.duration)[:2], p) for s, e, p in self.spans]
        return ({"answer": self.answer,
                 "spans": [{"start": s, "end": e, "score": round(p, 4)} for s, e, p in rounded],
                 "evidence": [[*round_span(s, e, self.duration)[:2], round(p, 2)] for s, e, p in self.evidence],
                 "duration": round(self.duration, 3)} | ({"tube": self.tube} if self.tube else {})
                | ({"warning": self.warning} if self.warning else {}) | {"model": self.model})


class Grounder:
    """A trained model with its processor (a :class:`~damo.pipeline.DamoPipeline`, or a whole VLM that
    holds its own) plus the clip pipeline it was trained with. ``model`` is the module that runs."""

    def __init__(self, pipeline: DamoPipeline | VideoLLM, cache_dir: str | Path | None = None, card: dict | None = None,
                 max_new_tokens: int = MAX_NEW_TOKENS):
        self.pipeline = pipeline
        self.model: DamoModel | VideoLLM = pipeline.model if isinstance(pipeline, DamoPipeline) else pipeline
        self.card = card        # model_card.json of the model's folder (None: unknown)
        self.max_new_tokens = max_new_tokens
        self.clips = ClipLoader(pipeline.processor, cache_dir)
        self._lock = threading.Lock()   # one inference at a time: the model is shared by server threads

    def ground(self, video: str | Path, query: str, progress: bool = False) -> dict:
        """Answer ``query`` about ``video`` (a file or a ``synth://`` URI).

        Returns ``{"answer", "spans": [{"start", "end", "score"}] (best first), "evidence":
        [[start, end, score]] (the pure-grounding stage), "duration", "model": {"trained_on", ...}}``
        (the model's card, :mod:`damo.card`), seconds throughout; ``"tube"`` (boxes per frame time,
        in [0, 1]) when a box-token model answered where; ``"warning"`` when a model trained only on
        procedural videos is asked about a real one.
        Undecodable files raise :class:`~damo.media.MediaError`, bad queries ``ValueError``.
        """
        return self.explain(video, query, progress).to_dict()

    def explain(self, video: str | Path, query: str, progress: bool = False) -> Grounding:
        """:meth:`ground` plus frame times, thumbnails and each evidence token's score curve.

        ``progress`` draws tqdm bars on stderr for decoding and for the model's steps.
        """
        query = check_query(query)
        proc = self.pipeline.processor
        proc.query_ids(query)               # refuse an over-long question before decoding anything
        if not isinstance(video, (str, Path)) or not str(video):
            raise ValueError(f"video must be a file path or a synth:// URI, got {video!r}")
        raw = _with_ticker(lambda: self.clips.raw(str(video)), f"decode {printable(Path(str(video)).name)}", progress)
        cfg = self.model.cfg
        if raw.num_frames > cfg.max_frames:
            raise ValueError(f"{video}: {raw.duration:.0f} s gives {raw.num_frames} frames at {cfg.fps:g} fps, more "
                             f"than this model's {cfg.max_frames}; cut the video into parts of at most "
                             f"{cfg.max_frames / cfg.fps:.0f} s")
        clip = proc.video_inputs(raw)
        raw.audio = np.zeros(0, raw.audio.dtype)   # the features hold what the model needs; an hour's sound is 115 MB
        with self._lock, _llm_progress(self.model, progress, self.max_new_tokens):
            r = self.pipeline.answer([clip], [query], self.max_new_tokens)[0]
        return Grounding(video=str(video), query=query, answer=r["answer"],
                         spans=[list(map(float, sp)) for sp in r["spans"]],
                         evidence=[list(map(float, sp)) for sp in r["evidence"]], duration=float(clip.duration),
                         times=clip.times.numpy().astype(np.float64), scores=[np.asarray(s) for s in r["scores"]],
                         frames=raw.frames, threshold=cfg.evidence.threshold, tube=r["tube"],
                         model=model_card.summary(self.card), warning=model_card.real_video_warning(self.card, video))

    def ground_batch(self, source: str | Path, query: str | None = None, progress: bool = True) -> Iterator[dict]:
        """Ground every request of a folder of videos or a JSONL file, yielding one row per request.

        A folder needs ``query`` and uses its video files (by suffix, sorted by name). A JSONL
        line holds ``video`` and ``query`` (``query`` falls back to the argument); canonical
        samples work, their ``id`` is kept and their ``spans`` are scored as ground truth.
        Relative ``video`` paths resolve against the JSONL's folder. A request that fails yields
        ``{"video", "error"}`` (plus ``line``/``id`` when known) and the batch goes on.
        """
        requests = list(read_batch(source, query))
        bar = tqdm(requests, desc="ground", unit="video", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        for req in bar:
            if "error" in req:
                yield req
                continue
            head = {k: req[k] for k in ("id", "line") if k in req}
            try:
                g = self.explain(req["video"], req["query"])
                row = {**head, "video": req["video"], "query": g.query, **g.to_dict()}
                if req.get("truth") is not None:
                    row.update(score_truth(g, req["truth"]))
            except (MediaError, ValueError, OSError) as e:
                row = {**head, "video": req["video"], "error": str(e)}
            except Exception as e:      # any other failure is this item's alone: record it and go on
                row = {**head, "video": req["video"], "error": f"{type(e).__name__}: {e}"}
            yield row


def score_truth(g: Grounding, truth: list) -> dict:
    """Cleaned ground truth, what cleaning fixed, and the IoU of the top span with it."""
    clean, notes = check_truth(truth, g.duration)
    out: dict = {"truth": [[round(s, 3), round(e, 3)] for s, e in clean]}
    if notes:
        out["truth_fixed"] = notes
    if clean and g.spans:
        out["iou"] = round(float(span_iou([g.spans[0][:2]], clean).max()), 4)
    return out


def read_batch(source: str | Path, query: str | None = None) -> Iterator[dict]:
    """Requests ``{"video", "query"[, "id", "truth", "line"]}`` or failures ``{"video", "error"}``."""
    src = Path(source)
    if src.is_dir():
        if query is None:
            raise ValueError(f"{src} is a folder of videos: give the question with --query")
        check_query(query)
        entries = sorted(p for p in src.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if not entries:
            raise ValueError(f"{src} holds no video files (looked for {', '.join(sorted(VIDEO_SUFFIXES))})")
        for p in entries:       # a folder or a dangling link named like a video is a failure, not a silent skip
            if p.is_file():
                yield {"video": str(p), "query": query}
            else:
                what = "a folder" if p.is_dir() else "a link to nothing" if p.is_symlink() else "not a regular file"
                yield {"video": str(p), "error": f"{p.name} is {what}, not a video file"}
        return
    if not src.is_file():
        raise ValueError(f"{src}: no such folder or JSONL file; give a folder of videos or a .jsonl of requests")
    with open(src, "rb") as f:
        for n, raw in read_lines(f):
            if raw is None:
                yield {"line": n, "video": None, "error": line_too_long(n)}
            elif raw.strip():
                yield _batch_line(raw, n, src.parent, query)


def _batch_line(raw: bytes, n: int, base: Path, query: str | None) -> dict:
    """One JSONL line -> a request, or a failure record naming the line and the problem."""
    try:
        text = raw.decode("utf-8")
        bad_bytes = None
    except UnicodeDecodeError as e:
        text = raw.decode("utf-8", errors="replace")
        bad_bytes = f"line {n} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); save the file as UTF-8"
    try:
        d = loads(text, f"line {n}")
    except json.JSONDecodeError as e:
        return {"line": n, "video": None, "error": f"line {n} is not valid JSON ({e.msg})"}
    except ValueError as e:
        return {"line": n, "video": None, "error": str(e)}
    if not isinstance(d, dict):
        return {"line": n, "video": None, "error": f"line {n} must be a JSON object with 'video' and 'query'"}
    video = d.get("video")
    head = {"line": n, **({"id": str(d["id"])} if "id" in d else {})}
    if not isinstance(video, str) or not video:
        return {**head, "video": video, "error": f"line {n} has no 'video' (a file path)"}
    if not video.startswith("synth://") and not Path(video).is_absolute():
        video = str(base / video)
    if bad_bytes:
        return {**head, "video": video, "error": bad_bytes}
    q = d.get("query", query)
    try:
        q = check_query(q)
    except ValueError as e:
        return {**head, "video": video, "error": f"line {n}: {e}"}
    truth = d.get("spans")
    return {**head, "video": video, "query": q, "truth": truth if truth else None}


def _with_ticker(fn, desc: str, progress: bool):
    """Run ``fn`` with an elapsed-time bar on stderr: decoding reports no finer progress than that."""
    if not progress:
        return fn()
    with ThreadPoolExecutor(1) as pool, tqdm(desc=desc, total=1, unit="video", file=sys.stderr,
                                             bar_format="{desc}: {elapsed} {postfix}", dynamic_ncols=True) as bar:
        fut = pool.submit(fn)
        while True:
            try:
                out = fut.result(timeout=0.5)
                break
            except FutureTimeout:
                bar.refresh()
        bar.set_postfix_str(f"{out.num_frames} frames, {out.duration:.0f} s")
        bar.update(1)
    return out


class _llm_progress:
    """Count the LLM's forward passes (prefill + one per generated token) on a tqdm bar."""

    def __init__(self, model: DamoModel | VideoLLM, progress: bool, max_new_tokens: int):
        self.model, self.progress, self.max_new_tokens = model, progress, max_new_tokens

    def __enter__(self) -> "_llm_progress":
        if self.progress:
            self.bar = tqdm(desc="answer", total=self.max_new_tokens + 1, unit="step", file=sys.stderr, dynamic_ncols=True)
            self.hook = self.model.llm.register_forward_hook(self._step)
        return self

    def _step(self, *_) -> None:
        self.bar.update(1)   # a forward hook must return None, or it replaces the module's output

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.hook.remove()
            self.bar.total = self.bar.n   # generation stops early at end-of-text
            self.bar.close()


def vlm_source(model: str | Path, preset: str | None, dtype: str | None) -> tuple[str, str | None, str] | None:
    """``(checkpoint, preset, dtype)`` when ``model`` names a whole VLM: a checkpoint folder of the presets'
    families, anything with a ``preset`` (a hub id), or a model config whose top key is ``vlm`` (a YAML
    path or a shipped name such as ``qwen3-vl-8b``: its checkpoint, preset and dtype, the arguments
    taking precedence). None for anything else (a DaMO model folder). ``dtype`` defaults to ``auto``."""
    p = Path(model)
    if (p.is_file() and p.suffix in (".yaml", ".yml")) or (not p.exists() and len(p.parts) == 1):  # a config, a shipped name
        from damo.config import find, read_yaml
        from damo.model.vlm import VLMConfig

        try:
            path = find("configs", model)
        except FileNotFoundError:
            path = None
        raw = read_yaml(path) if path else None
        if isinstance(raw, dict) and "vlm" in raw:
            cfg = VLMConfig.from_dict(raw["vlm"], str(path))
            return cfg.name_or_path, preset or cfg.preset, dtype or cfg.dtype
    if preset is not None or checkpoint_type(model) is not None:
        return str(model), preset, dtype or "auto"
    return None


def load(path: str | Path, cache_dir: str | Path | None = None, device: str = "cpu",
         dtype: str | None = None, preset: str | None = None) -> Grounder:
    """Load a saved model folder (``config.json`` + ``model.safetensors`` + ``tokenizer/``) onto
    ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, or ``"auto"``: CUDA when there is one).
    ``dtype`` (``"float32"``, ``"bfloat16"``, ``"float16"``) sets the LLM's and the towers' weights
    instead of the saved config's (:meth:`DamoPipeline.load`). A Qwen2.5-VL, Qwen3-VL or Qwen2.5-Omni
    checkpoint (a folder, a hub id with ``preset``, or a ``vlm:`` model config: :func:`vlm_source`) runs
    under ``preset`` (:mod:`damo.model.presets`; default: its family's base model), in ``dtype`` or else
    bf16 on a GPU that supports it."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    source = vlm_source(path, preset, dtype)
    if source is not None:
        from damo.model.vlm import VideoLLM
        vlm = VideoLLM.from_pretrained(*source).to(device)
        return Grounder(vlm, cache_dir, vlm.card(), vlm.preset.max_new_tokens)
    return Grounder(DamoPipeline.load(path, dtype=dtype).to(device), cache_dir, model_card.read_card(path))
