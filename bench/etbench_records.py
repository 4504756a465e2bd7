"""E.T. Bench-shaped records with model-like free-text answers, built from the real shared annotations.

E.T. Bench itself is not in the shared data, so the timing bench builds records of the same layout
(``task, source, idx, video, duration, tgt, g, o, p, q`` plus the answer ``a``) from Charades-STA,
ActivityNet Captions and YouCook2: real spans and captions, answers perturbed by a seeded generator
in the phrasings the official parser meets (ranges, "starts at ... ends at ...", clock times,
letters, option text, caption paragraphs), including some it fails on.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

# (task, source, count): 1,360 records over the 12 tasks, close to E.T. Bench's proportions per task
PLAN = (("rar", "perception_test", 110), ("eca", "perception_test", 110), ("rvq", "star", 110),
        ("tvg", "charades_sta", 120), ("epm", "ego4d_nlq", 110), ("tal", "thumos14", 110), ("evs", "summe", 110),
        ("vhd", "qvhighlights", 110), ("dvc", "youcook2", 120), ("slc", "activitynet", 120),
        ("tem", "activitynet", 110), ("gvq", "qa_ego4d", 120))


def _fmt(x: float, rng: random.Random) -> str:
    style = rng.random()
    if style < 0.1:
        return f"{int(x) // 60:02d}:{int(x) % 60:02d}"     # clock time (the official misreads it)
    return f"{x:.1f}" if style < 0.8 else f"{x:.0f}"


def _span_answer(s: float, e: float, rng: random.Random) -> str:
    k = rng.random()
    if k < 0.45:
        return f"The event happens in {_fmt(s, rng)} - {_fmt(e, rng)} seconds."
    if k < 0.65:
        return f"It starts at {_fmt(s, rng)} seconds and ends at {_fmt(e, rng)} seconds."
    if k < 0.8:
        return f"From {_fmt(s, rng)} to {_fmt(e, rng)}."
    if k < 0.92:
        return f"The moment starts at {_fmt(s, rng)}.\nIt ends at {_fmt(e, rng)}."
    return "I cannot find this moment in the video."


def _jitter(s: float, e: float, duration: float, rng: random.Random) -> tuple[float, float]:
    w = max(e - s, 1.0)
    s2 = min(max(0.0, s + rng.gauss(0, 0.3 * w)), duration - 0.5)
    e2 = min(duration, max(s2 + 0.5, e + rng.gauss(0, 0.3 * w)))
    return round(s2, 1), round(e2, 1)


def _caption_answer(spans, sentences, duration, rng: random.Random) -> str:
    words = [w for s in sentences for w in s.split()]
    lines = []
    for (s, e), sent in zip(spans, sentences):
        if rng.random() < 0.2:
            continue                                                  # a missed event
        s2, e2 = _jitter(s, e, duration, rng)
        toks = sent.lower().rstrip(".").split()
        for _ in range(rng.randint(0, 3)):                            # paraphrase by swapping words
            toks[rng.randrange(len(toks))] = rng.choice(words).lower()
        lines.append(f"{s2:.1f} - {e2:.1f} seconds, {' '.join(toks)}.")
    if rng.random() < 0.3:                                            # a hallucinated event
        s2 = round(rng.uniform(0, duration - 2), 1)
        lines.append(f"{s2:.1f} - {min(duration, s2 + 5):.1f} seconds, {' '.join(rng.sample(words, 5))}.")
    if not lines or rng.random() < 0.05:
        return "The video shows several steps."                       # unparseable
    return ("\n" if rng.random() < 0.5 else " ").join(lines)


def make_records(data: Path, seed: int = 0) -> list[dict]:
    """1,360 records with answers in ``a``, deterministic for a seed."""
    rng = random.Random(seed)
    sta = [(ln.split("##")[0].split(), ln.split("##")[1]) for ln in
           (data / "charades_sta" / "charades_sta_test.txt").read_text().splitlines()[:2000]]
    anet = json.loads((data / "activitynet_captions" / "val_1.json").read_text())
    yc2 = json.loads((data / "youcook2" / "yc2_val.json").read_text())
    anet_items = [(v, d) for v, d in anet.items() if 2 <= len(d["sentences"]) <= 8]
    yc2_items = list(yc2.items())
    captions = [s.strip() for _, d in anet_items[:3000] for s in d["sentences"] if 3 <= len(s.split()) <= 12]
    out = []
    for task, source, count in PLAN:
        for idx in range(count):
            r = {"version": 1.0, "task": task, "source": source, "idx": idx}
            if task in ("tvg", "epm", "gvq"):
                (vid, s, e), query = rng.choice(sta)
                s, e = float(s), float(e)
                duration = max(e, 30.0)
                r.update(video=f"{vid}.mp4", duration=duration, tgt=[s, e], q=query.strip())
                s2, e2 = _jitter(s, e, duration, rng)
                answer = _span_answer(s2, e2, rng)
                if task == "gvq":
                    opts = rng.sample(captions, 4)
                    p = rng.randrange(4)
                    r.update(o=opts, p=p)
                    pick = p if rng.random() < 0.6 else rng.randrange(4)
                    lead = f"({'ABCD'[pick]}) " if rng.random() < 0.7 else opts[pick].lower() + ". "
                    answer = lead + answer
                r["a"] = answer
            elif task in ("tem", "tal", "evs", "vhd"):
                vid, d = rng.choice(anet_items)
                duration = float(d["duration"])
                spans = [[float(a), float(min(b, duration))] for a, b in d["timestamps"]][:4]
                r.update(video=f"{vid}.mp4", duration=duration, q=f"Find every moment: {d['sentences'][0].strip()}")
                if task == "vhd":
                    r["tgt"] = [spans, spans[:1]]                        # two annotators
                    t = rng.uniform(0, duration)
                    r["a"] = f"The highlight is at {t:.1f} seconds." if rng.random() < 0.9 else "no highlight"
                else:
                    r["tgt"] = spans
                    guesses = [_jitter(s, e, duration, rng) for s, e in spans if rng.random() < 0.7] or [(0.0, 5.0)]
                    r["a"] = (", ".join(f"{s:.1f} - {e:.1f} seconds" for s, e in guesses) if rng.random() < 0.85
                              else _span_answer(*guesses[0], rng))
            elif task in ("dvc", "slc"):
                vid, d = rng.choice(yc2_items if task == "dvc" else anet_items)
                duration = float(d["duration"])
                spans = [[float(a), float(min(b, duration))] for a, b in d["timestamps"]]
                sents = [s.strip() for s in d["sentences"]]
                r.update(video=f"{vid}.mp4", duration=duration, tgt=spans, g=sents, q="Describe every event with times.")
                r["a"] = _caption_answer(spans, sents, duration, rng)
            else:                                                          # rar / eca / rvq
                vid, d = rng.choice(anet_items)
                n = 5 if task == "rvq" else 4
                opts = rng.sample(captions, n)
                p = rng.randrange(n)
                r.update(video=f"{vid}.mp4", duration=float(d["duration"]), o=opts, p=p, q="Which option is right?")
                pick = p if rng.random() < 0.5 else rng.randrange(n)
                k = rng.random()
                r["a"] = (f"({'ABCDE'[pick]})" if k < 0.4 else f"Best option: ({'ABCDE'[pick]}) {opts[pick]}" if k < 0.6
                          else opts[pick] if k < 0.9 else "")
            out.append(r)
    return out
