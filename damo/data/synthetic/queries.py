"""The questions and answers of a video: grounding, multi-moment grounding, dense captions and
grounded QA, phrased from a small vocabulary and answered exactly from the spec."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from damo.data.schema import Sample
from damo.spans import overlap

from .events import STREAMS, Event, VideoSpec, _rngs

# A small vocabulary with two or three phrasings per query kind.
TEMPLATES = {
    "appear": ("when does the {look} appear?", "when is the {look} on screen?",
               "at what time can the {look} be seen?"),
    "sound": ("when does the {sound} {verb}?", "when can the {sound} be heard?", "at what time is the {sound} heard?"),
    "flash": ("when does the {look} flash with the beep?", "when does the {look} blink along with the beeping?",
              "at what time does the {look} flash to the beep?"),
    "composite": ("when is the {look} visible while the {sound} {verb}s?",
                  "when are the {look} and the {sound} present together?",
                  "when does the {sound} {verb} while the {look} is on screen?"),
    "repeat_visual": ("when does the {look} appear?", "find every time the {look} appears.",
                      "at which times is the {look} on screen?"),
    "repeat_audio": ("when does the {sound} {verb}?", "find every time the {sound} {verb}s.",
                     "at which times is the {sound} heard?"),
    "describe": ("describe the events with their times.", "list what happens in the video and when.",
                 "give a timeline of the events."),
    "colour": ("what colour is the shape that appears while the {sound} {verb}s?",
               "while the {sound} {verb}s, what colour is the shape on screen?"),
    "shape": ("what shape appears while the {sound} {verb}s?", "while the {sound} {verb}s, which shape is on screen?"),
    "identify_sound": ("what sound plays while the {look} is visible?", "what can be heard while the {look} is on screen?"),
    "after": ("what happens right after the {mention}?", "what comes next after the {mention}?"),
    "before": ("what happens right before the {mention}?", "what comes just before the {mention}?"),
    "count_visual": ("how many times does the {look} appear?", "how often is the {look} on screen?"),
    "count_audio": ("how many times does the {sound} {verb}?", "how often is the {sound} heard?"),
    "change": ("what colour does the {look} turn into?", "the {look} changes colour; to which colour?"),
}
SOUND_ANSWER = {"low tone": "a low tone", "mid tone": "a mid tone", "high tone": "a high tone",
                "beep": "a beep", "noise burst": "a noise burst"}


def caption(ev: Event) -> str:
    """One short sentence per event, used for dense captions and ordering answers."""
    if ev.kind == "shape":
        verb = "moves across the screen" if ev.moving else "appears"
        if ev.change_at >= 0:
            verb = ("moves" if ev.moving else "appears") + f" and turns {ev.colour2}"
        return f"a {ev.colour} {ev.shape} {verb}"
    if ev.kind == "flash":
        return f"a {ev.colour} {ev.shape} flashes with the beep"
    return {"tone": f"a {ev.pitch} tone plays", "beep": "a beep sounds", "noise": "a noise burst sounds"}[ev.kind]


def _mention(ev: Event) -> str:
    if ev.kind == "shape":
        return f"{ev.colour} {ev.shape}"
    if ev.kind == "flash":
        return f"{ev.colour} {ev.shape}'s flash"
    return ev.sound


def _modality(events: list[Event]) -> str:
    """Union of the queried events' modalities (a flash or a visual+audio mix is audio-visual)."""
    streams = {st for e in events for st in STREAMS[e.kind]}
    return "audio-visual" if len(streams) == 2 else next(iter(streams))


@dataclass(frozen=True)
class _Occ:
    """One occurrence of a descriptor: a colour interval of a shape, or one sound."""
    key: tuple        # ("v", shape, colour) or ("a", sound)
    start: int
    end: int
    event: int        # index into spec.events


def _occurrences(spec: VideoSpec) -> dict[tuple, list[_Occ]]:
    occ: dict[tuple, list[_Occ]] = {}
    for i, ev in enumerate(spec.events):
        for sh, c, s, e in ev.visual_segments():
            occ.setdefault(("v", sh, c), []).append(_Occ(("v", sh, c), s, e, i))
        for snd, s, e in ev.audio_segments():
            occ.setdefault(("a", snd), []).append(_Occ(("a", snd), s, e, i))
    return {k: sorted(v, key=lambda o: (o.start, o.end)) for k, v in occ.items()}


def _verb(sound: str) -> str:
    return "play" if sound.endswith("tone") else "sound"


def _look(key: tuple) -> str:
    return f"{key[2]} {key[1]}"


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def _queries(spec: VideoSpec, rng: np.random.Generator) -> list[dict]:
    """At most one query per kind that applies to this video, in a fixed kind order."""
    ev = spec.events
    occ = _occurrences(spec)
    unique = {k: v[0] for k, v in occ.items() if len(v) == 1}
    uv = [o for k, o in unique.items() if k[0] == "v"]
    ua = [o for k, o in unique.items() if k[0] == "a"]
    out: list[dict] = []

    def tpl(kind: str, **words: str) -> str:
        return _pick(rng, TEMPLATES[kind]).format(**words)

    def add(task: str, kind: str, query: str, spans: list, targets: list[int], answer: str = "",
            captions: list[str] | None = None) -> None:
        out.append(dict(task=task, kind=kind, query=query, answer=answer, spans=[[float(s), float(e)] for s, e in spans],
                        captions=captions or [], targets=targets,
                        modality=_modality([ev[i] for i in targets])))

    # grounding: one query -> one span
    cands = [o for o in uv if ev[o.event].kind == "shape"]
    if cands:
        o = _pick(rng, cands)
        add("grounding", "appear", tpl("appear", look=_look(o.key)), [(o.start, o.end)], [o.event],
            answer=f"the {_look(o.key)} is on screen")
    cands = [o for o in ua if ev[o.event].kind != "flash"]
    if cands:
        o = _pick(rng, cands)
        add("grounding", "sound", tpl("sound", sound=o.key[1], verb=_verb(o.key[1])), [(o.start, o.end)], [o.event],
            answer=f"the {o.key[1]} {_verb(o.key[1])}s")
    cands = [o for o in uv if ev[o.event].kind == "flash"]
    if cands:
        o = _pick(rng, cands)
        add("grounding", "flash", tpl("flash", look=_look(o.key)), [(o.start, o.end)], [o.event],
            answer=f"the {_look(o.key)} flashes with the beep")
    if spec.difficulty != "easy":
        pairs = [(v, a) for v in uv for a in ua
                 if v.event != a.event and overlap((v.start, v.end), (a.start, a.end)) > 0]
        if pairs:
            v, a = _pick(rng, pairs)
            span = (max(v.start, a.start), min(v.end, a.end))
            add("grounding", "composite", tpl("composite", look=_look(v.key), sound=a.key[1], verb=_verb(a.key[1])), [span],
                [v.event, a.event], answer=f"the {_look(v.key)} is on screen while the {a.key[1]} {_verb(a.key[1])}s")
            out[-1]["modality"] = "audio-visual"

    # multi_grounding: a repeated descriptor -> all its spans
    reps = [k for k, v in occ.items() if len(v) >= 2]
    if reps:
        k = _pick(rng, reps)
        q = tpl("repeat_visual", look=_look(k)) if k[0] == "v" else tpl("repeat_audio", sound=k[1], verb=_verb(k[1]))
        said = f"the {_look(k)} is on screen" if k[0] == "v" else f"the {k[1]} {_verb(k[1])}s"
        add("multi_grounding", "repeat", q, [(o.start, o.end) for o in occ[k]], [o.event for o in occ[k]], answer=said)

    # dense_caption: every event in time order
    if ev:
        caps = [caption(e) for e in ev]
        add("dense_caption", "describe", tpl("describe"), [(e.start, e.end) for e in ev], list(range(len(ev))),
            answer="; ".join(caps) + ".", captions=caps)

    # grounded_qa: attribute of the one shape on screen during a unique sound (a flash's own
    # shape counts: it is on screen while its beep plays)
    cands = []
    for a in ua:
        vs = [o for k, os in occ.items() if k[0] == "v" for o in os if overlap((o.start, o.end), (a.start, a.end)) > 0]
        if len(vs) == 1:
            cands.append((a, vs[0]))
    if cands:
        a, v = _pick(rng, cands)
        attr = _pick(rng, ["colour", "shape"])
        add("grounded_qa", attr, tpl(attr, sound=a.key[1], verb=_verb(a.key[1])), [(v.start, v.end)], [v.event],
            answer=v.key[2] if attr == "colour" else v.key[1])
    # grounded_qa: the one sound heard while a unique shape is visible
    cands = []
    for v in uv:
        as_ = [o for k, os in occ.items() if k[0] == "a" for o in os if overlap((o.start, o.end), (v.start, v.end)) > 0]
        if len(as_) == 1:
            cands.append((v, as_[0]))
    if cands:
        v, a = _pick(rng, cands)
        add("grounded_qa", "identify_sound", tpl("identify_sound", look=_look(v.key)), [(a.start, a.end)],
            [a.event], answer=SOUND_ANSWER[a.key[1]])
    # grounded_qa: ordering, the next (or previous) event after a uniquely named one
    order = []
    for i, e in enumerate(ev):
        key = ("v", e.shape, e.colour) if e.shape else ("a", e.sound)
        if len(occ[key]) != 1:
            continue
        after = [j for j, f in enumerate(ev) if j != i and f.start >= e.end]
        if after:
            first = min(ev[j].start for j in after)
            nxt = [j for j in after if ev[j].start == first]
            if len(nxt) == 1:
                order.append(("after", i, nxt[0]))
        before = [j for j, f in enumerate(ev) if j != i and f.end <= e.start]
        if before:
            last = max(ev[j].end for j in before)
            prv = [j for j in before if ev[j].end == last]
            if len(prv) == 1:
                order.append(("before", i, prv[0]))
    if order:
        kind, i, j = _pick(rng, order)
        add("grounded_qa", kind, tpl(kind, mention=_mention(ev[i])), [(ev[j].start, ev[j].end)], [j],
            answer=caption(ev[j]))
    # grounded_qa: counting (repeated descriptors are drawn three times as often)
    keys = sorted(occ)
    weights = np.array([3.0 if len(occ[k]) >= 2 else 1.0 for k in keys])
    if keys:
        k = keys[int(rng.choice(len(keys), p=weights / weights.sum()))]
        q = tpl("count_visual", look=_look(k)) if k[0] == "v" else tpl("count_audio", sound=k[1], verb=_verb(k[1]))
        add("grounded_qa", "count", q, [(o.start, o.end) for o in occ[k]], [o.event for o in occ[k]],
            answer=str(len(occ[k])))
    # grounded_qa: colour change (hard)
    cands = [i for i, e in enumerate(ev) if e.change_at >= 0 and len(occ[("v", e.shape, e.colour)]) == 1]
    if cands:
        i = _pick(rng, cands)
        e = ev[i]
        add("grounded_qa", "change", tpl("change", look=f"{e.colour} {e.shape}"), [(e.change_at, e.end)], [i],
            answer=e.colour2)
    return out


def video_samples(spec: VideoSpec, video: str | None = None) -> list[Sample]:
    """All samples of one video; ``video`` overrides the URI (e.g. an encoded file's path)."""
    _, qrng = _rngs(spec.difficulty, spec.seed, spec.split, spec.index)
    events = [e.to_dict() for e in spec.events]
    samples = []
    for k, q in enumerate(_queries(spec, qrng)):
        samples.append(Sample(
            id=f"{spec.split}-{spec.index:05d}-{k}", video=video or spec.uri, duration=float(spec.duration),
            task=q["task"], query=q["query"], answer=q["answer"], spans=q["spans"], captions=q["captions"],
            source="synthetic",
            meta={"modality": q["modality"], "kind": q["kind"], "targets": q["targets"], "events": events,
                  "video_index": spec.index, "difficulty": spec.difficulty, "uri": spec.uri}))
    return samples
