"""Procedural audio-visual data: determinism, exact ground truth, rendering and encoding."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from damo.data.schema import load_samples
from damo.data.synthetic import (
    BACKGROUND, BEEP_HZ, COLOURS, DIFFICULTIES, PITCHES, SHAPES, VideoSpec, generate_samples, generate_spec,
    is_synth_uri, make_uri, render, render_clip, spec_from_uri, synth_samples, synthesize, video_samples,
    write_video,
)
from damo.media import SAMPLE_RATE

SOUNDS = ("low tone", "mid tone", "high tone", "beep", "noise burst")


# ---- an independent reference: per-second timelines rebuilt from the event dicts ----------
def _runs(seconds: set[int]) -> list[list[float]]:
    """Maximal runs of consecutive whole seconds as [start, end] spans."""
    out: list[list[float]] = []
    for t in sorted(seconds):
        if out and out[-1][1] == t:
            out[-1][1] = float(t + 1)
        else:
            out.append([float(t), float(t + 1)])
    return out


def _sound_name(e: dict) -> str:
    return {"tone": f"{e['pitch']} tone", "noise": "noise burst"}.get(e["kind"], "beep")


def _timelines(events: list[dict]) -> tuple[dict, dict]:
    """(look -> spans, sound -> spans), look = "colour shape", from whole-second occupancy."""
    looks: dict[str, set[int]] = {}
    sounds: dict[str, set[int]] = {}
    for e in events:
        for t in range(e["start"], e["end"]):
            if e["kind"] in ("shape", "flash"):
                colour = e["colour2"] if 0 <= e["change_at"] <= t else e["colour"]
                looks.setdefault(f"{colour} {e['shape']}", set()).add(t)
            if e["kind"] in ("tone", "beep", "noise", "flash"):
                sounds.setdefault(_sound_name(e), set()).add(t)
    return {k: _runs(v) for k, v in looks.items()}, {k: _runs(v) for k, v in sounds.items()}


LOOK_RE = re.compile(r"\b(%s) (%s)\b" % ("|".join(COLOURS), "|".join(SHAPES)))
SOUND_RE = re.compile(r"\b(%s)\b" % "|".join(SOUNDS))


def _look(q: str) -> str:
    m = LOOK_RE.search(q)
    assert m, q
    return m.group(0)


def _sound(q: str) -> str:
    m = SOUND_RE.search(q)
    assert m, q
    return m.group(1)


def _inter(a: list[float], b: list[float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def _event_span(e: dict) -> list[float]:
    return [float(e["start"]), float(e["end"])]


def _said_verb(sound: str) -> str:
    return "plays" if sound.endswith("tone") else "sounds"


def _expected(s) -> tuple[str, list[list[float]]]:
    """Recompute (answer, spans) of a sample from its query and event list alone."""
    ev = s.meta["events"]
    looks, sounds = _timelines(ev)
    kind, q = s.meta["kind"], s.query
    if kind in ("appear", "flash"):
        (span,) = looks[_look(q)]  # exactly one occurrence, or the unpacking fails
        if kind == "flash":
            assert [e["kind"] for e in ev if _event_span(e) == span and e["kind"] == "flash"] == ["flash"]
            return f"the {_look(q)} flashes with the beep", [span]
        return f"the {_look(q)} is on screen", [span]
    if kind == "sound":
        (span,) = sounds[_sound(q)]
        return f"the {_sound(q)} {_said_verb(_sound(q))}", [span]
    if kind == "composite":
        (v,), (a,) = looks[_look(q)], sounds[_sound(q)]
        assert _inter(v, a) > 0
        said = f"the {_look(q)} is on screen while the {_sound(q)} {_said_verb(_sound(q))}"
        return said, [[max(v[0], a[0]), min(v[1], a[1])]]
    if kind in ("repeat", "count"):
        m = LOOK_RE.search(q)
        spans = looks[m.group(0)] if m else sounds[_sound(q)]
        if kind == "repeat":
            assert len(spans) >= 2
        said = f"the {m.group(0)} is on screen" if m else f"the {_sound(q)} {_said_verb(_sound(q))}"
        return (str(len(spans)) if kind == "count" else said), spans
    if kind in ("colour", "shape"):
        (a,) = sounds[_sound(q)]
        hits = [(look, sp) for look, sps in looks.items() for sp in sps if _inter(sp, a) > 0]
        (look, sp), = hits
        colour, shape = look.split()
        return (colour if kind == "colour" else shape), [sp]
    if kind == "identify_sound":
        (v,) = looks[_look(q)]
        hits = [(name, sp) for name, sps in sounds.items() for sp in sps if _inter(sp, v) > 0]
        (name, sp), = hits
        return f"a {name}", [sp]
    if kind in ("after", "before"):
        m = LOOK_RE.search(q)
        anchor_span = looks[m.group(0)] if m else sounds[_sound(q)]
        if m:
            named = lambda e: e["kind"] in ("shape", "flash") and f"{e['colour']} {e['shape']}" == m.group(0)  # noqa: E731
        else:
            named = lambda e: e["kind"] not in ("shape", "flash") and _sound_name(e) == _sound(q)  # noqa: E731
        (anchor,) = [e for e in ev if _event_span(e)[0] == anchor_span[0][0] and named(e)]
        if kind == "after":
            cands = [e for e in ev if e is not anchor and e["start"] >= anchor["end"]]
            best = min(e["start"] for e in cands)
            (nxt,) = [e for e in cands if e["start"] == best]
        else:
            cands = [e for e in ev if e is not anchor and e["end"] <= anchor["start"]]
            best = max(e["end"] for e in cands)
            (nxt,) = [e for e in cands if e["end"] == best]
        return s.answer, [_event_span(nxt)]  # the caption text is checked in test_captions
    if kind == "describe":
        order = sorted(ev, key=lambda e: (e["start"], e["end"]))
        return "; ".join(s.captions) + ".", [_event_span(e) for e in order]
    if kind == "change":
        (e,) = [e for e in ev if e["change_at"] >= 0 and f"{e['colour']} {e['shape']}" == _look(q)]
        return e["colour2"], [[float(e["change_at"]), float(e["end"])]]
    raise AssertionError(f"unknown kind {kind}")


@pytest.fixture(scope="module")
def samples_by_difficulty() -> dict[str, list]:
    return {d: generate_samples(150, seed=7, difficulty=d) for d in DIFFICULTIES}


# ---- determinism ---------------------------------------------------------------------------
def test_same_seed_same_samples_and_media() -> None:
    a = [s.to_dict() for s in generate_samples(6, seed=3)]
    b = [s.to_dict() for s in generate_samples(6, seed=3)]
    assert a == b
    uri = make_uri("standard", 3, "train", 4)
    c1, c2 = render_clip(uri), render_clip(uri)
    assert np.array_equal(c1.frames, c2.frames) and np.array_equal(c1.audio, c2.audio)


def test_different_seed_differs() -> None:
    a = [generate_spec("standard", 0, "train", i) for i in range(5)]
    b = [generate_spec("standard", 1, "train", i) for i in range(5)]
    assert all(x.events != y.events for x, y in zip(a, b))
    frames_a, frames_b = render(a[0], 1.0)[0], render(b[0], 1.0)[0]
    assert frames_a.shape != frames_b.shape or not np.array_equal(frames_a, frames_b)


def test_video_k_independent_of_n_and_splits_differ() -> None:
    small = [s.to_dict() for s in generate_samples(3, seed=5) if s.meta["video_index"] == 2]
    large = [s.to_dict() for s in generate_samples(12, seed=5) if s.meta["video_index"] == 2]
    assert small and small == large
    assert generate_spec("standard", 5, "train", 2).events != generate_spec("standard", 5, "val", 2).events


def test_uri_alone_reproduces_the_clip() -> None:
    spec = generate_spec("hard", 11, "val", 9)
    assert spec.uri == "synth://hard/11/val/9" and is_synth_uri(spec.uri)
    assert spec_from_uri(spec.uri) == spec
    f1, a1 = render(spec, fps=1.0)
    clip = render_clip(spec.uri)
    assert np.array_equal(clip.frames, f1) and np.array_equal(clip.audio, a1)
    assert clip.source == spec.uri and clip.has_audio and clip.duration == spec.duration


def test_uri_and_spec_parsing_errors() -> None:
    for bad in ("synth://medium/0/train/1", "synth://easy/0/dev/1", "synth://easy?n=3", "file.mp4", "synth://easy/0/train"):
        assert not is_synth_uri(bad)
        with pytest.raises(ValueError, match="synth://DIFFICULTY/SEED/SPLIT/INDEX"):
            spec_from_uri(bad)
    with pytest.raises(ValueError, match="bad parameter"):
        synth_samples("synth://easy?count=3")
    with pytest.raises(ValueError, match="unknown difficulty"):
        synth_samples("synth://medium?n=3")
    with pytest.raises(ValueError, match="unknown tasks"):
        synth_samples("synth://easy?n=3&tasks=grounding,highlight")


def test_synth_samples_spec_matches_generate() -> None:
    got = synth_samples("synth://standard?n=5&seed=2&split=val")
    assert [s.to_dict() for s in got] == [s.to_dict() for s in generate_samples(5, 2, "standard", "val")]
    only = synth_samples("synth://standard?n=5&seed=2&split=val&tasks=grounding")
    assert only and {s.task for s in only} == {"grounding"}
    assert [s.id for s in only] == [s.id for s in got if s.task == "grounding"]
    assert all(s.video.startswith("synth://standard/2/val/") for s in got)


# ---- ground truth ----------------------------------------------------------------------------
def test_spans_valid_ids_and_meta(samples_by_difficulty) -> None:
    for d, samples in samples_by_difficulty.items():
        ids = [s.id for s in samples]
        assert len(ids) == len(set(ids))
        for s in samples:
            assert re.fullmatch(r"train-\d{5}-\d+", s.id) and int(s.id.split("-")[1]) == s.meta["video_index"]
            assert s.source == "synthetic" and s.video == make_uri(d, 7, "train", s.meta["video_index"])
            assert 8 <= s.duration <= 64 and s.spans
            for a, b in s.spans:
                assert 0 <= a < b <= s.duration and a == int(a) and b == int(b)
            for e in s.meta["events"]:
                assert 2 <= e["end"] - e["start"] <= 12


def test_answers_recomputed_from_events(samples_by_difficulty) -> None:
    checked = 0
    for samples in samples_by_difficulty.values():
        for s in samples:
            answer, spans = _expected(s)
            assert s.spans == spans, (s.id, s.query, s.spans, spans)
            assert s.answer == answer, (s.id, s.query, s.answer, answer)
            checked += 1
    assert checked > 1000


def test_captions_and_modalities(samples_by_difficulty) -> None:
    for s in samples_by_difficulty["hard"]:
        if s.task == "dense_caption":
            assert len(s.captions) == len(s.spans) == len(s.meta["events"])
            for cap, e in zip(s.captions, s.meta["events"]):
                assert (e["kind"] in ("shape", "flash")) == bool(LOOK_RE.match(cap[2:]))
                if e["kind"] == "flash":
                    assert cap == f"a {e['colour']} {e['shape']} flashes with the beep"
                if e["kind"] == "tone":
                    assert cap == f"a {e['pitch']} tone plays"
        if s.meta["kind"] in ("after", "before"):
            assert s.answer in [c for t in samples_by_difficulty["hard"] if t.task == "dense_caption"
                                and t.meta["video_index"] == s.meta["video_index"] for c in t.captions]
        targets = [s.meta["events"][i] for i in s.meta["targets"]]
        streams = {m for e in targets for m in ("visual", "audio") if m in e["modality"]}
        want = "audio-visual" if len(streams) == 2 else streams.pop()
        assert s.meta["modality"] == want


def test_mix_of_tasks_kinds_and_modalities(samples_by_difficulty) -> None:
    std = samples_by_difficulty["standard"]
    assert {s.task for s in std} == {"grounding", "multi_grounding", "dense_caption", "grounded_qa"}
    grounding = [s for s in std if s.task == "grounding"]
    assert {s.meta["modality"] for s in grounding} == {"visual", "audio", "audio-visual"}
    assert {s.meta["kind"] for s in grounding} == {"appear", "sound", "flash", "composite"}
    assert {"colour", "identify_sound", "after", "count"} <= {s.meta["kind"] for s in std}
    # distractors on purpose: some standard video has the same shape in two colours
    assert any(len({e["colour"] for e in s.meta["events"] if e["shape"] == sh}) >= 2
               for s in std if s.task == "dense_caption" for sh in SHAPES)
    assert any(e["x0"] != e["x1"] for s in std for e in s.meta["events"])  # some shapes move
    easy = samples_by_difficulty["easy"]
    assert all(1 <= len(s.meta["events"]) <= 2 for s in easy)
    assert "composite" not in {s.meta["kind"] for s in easy}
    assert "change" in {s.meta["kind"] for s in samples_by_difficulty["hard"]}


# ---- rendering -----------------------------------------------------------------------------
def _visual_specs() -> list[VideoSpec]:
    return [generate_spec(d, 21, "train", i) for d in ("standard", "hard") for i in range(25)]


def test_frames_show_each_shape_inside_its_span_only() -> None:
    checked = 0
    for spec in _visual_specs():
        frames, _ = render(spec, fps=1.0)
        assert frames.shape == (spec.duration, 64, 64, 3)
        for e in spec.events:
            if e.kind not in ("shape", "flash"):
                continue
            for i in range(spec.duration):
                t = i + 0.5
                if not e.start <= t < e.end:
                    continue
                f = (t - e.start) / (e.end - e.start)
                cx, cy = e.x0 + f * (e.x1 - e.x0), e.y0 + f * (e.y1 - e.y0)
                colour = e.colour2 if 0 <= e.change_at <= t else e.colour
                assert tuple(frames[i, int(cy), int(cx)]) == COLOURS[colour]
                checked += 1
        # a colour appears in a frame iff some shape of that colour is active then
        for name, rgb in COLOURS.items():
            present = (frames == np.asarray(rgb, np.uint8)).all(-1).any(axis=(1, 2))  # (T,)
            active = np.zeros(spec.duration, bool)
            for e in spec.events:
                for i in range(e.start, e.end):
                    if e.kind in ("shape", "flash") and name == (e.colour2 if 0 <= e.change_at <= i else e.colour):
                        active[i] = True
            assert np.array_equal(present, active), (spec.uri, name)
    assert checked > 200


def test_frames_background_and_small_size() -> None:
    spec = generate_spec("easy", 4, "train", 0)
    frames, audio = render(spec, fps=2.0, size=32)
    assert frames.shape == (2 * spec.duration, 32, 32, 3) and frames.dtype == np.uint8
    assert audio.shape == (spec.duration * SAMPLE_RATE,) and audio.dtype == np.float32
    assert tuple(frames[0, 0, 0]) == BACKGROUND  # corners never hold a shape
    # the 32-px frame is the 2x2 block mean of the 64-px frame (area downscale)
    big, _ = render(spec, fps=2.0, size=64)
    ref = big.astype(np.float64).reshape(-1, 32, 2, 32, 2, 3).mean(axis=(2, 4))  # (T, 32, 32, 3)
    assert np.abs(frames - ref).max() <= 0.5 + 1e-9


def _band(audio: np.ndarray, second: int, hz: float) -> float:
    """Magnitude of the 1-Hz FFT bin at `hz` over one whole second of audio."""
    window = audio[second * SAMPLE_RATE:(second + 1) * SAMPLE_RATE]
    return float(np.abs(np.fft.rfft(window))[int(hz)])


def test_tone_energy_at_its_pitch_inside_its_span_only() -> None:
    checked = 0
    for i in range(40):
        spec = generate_spec("standard", 31, "train", i)
        _, audio = render(spec, fps=1.0)
        for pitch, hz in PITCHES.items():
            tones = [e for e in spec.events if e.kind == "tone" and e.pitch == pitch]
            for sec in range(spec.duration):
                on = any(e.start <= sec < e.end for e in tones)
                mag = _band(audio, sec, hz)
                # a 0.25-amplitude sine gives 0.25 * 16000 / 2 = 2000 in its bin (less the 5 ms ramps)
                if on:
                    assert mag > 1500, (spec.uri, pitch, sec, mag)
                else:
                    assert mag < 60, (spec.uri, pitch, sec, mag)
                checked += 1
        # standard audio never overlaps, so a tone's samples are exactly the analytic sine
        for e in (e for e in spec.events if e.kind == "tone"):
            n = np.arange(e.start * SAMPLE_RATE + 100, e.end * SAMPLE_RATE - 100)
            want = 0.25 * np.sin(2 * np.pi * PITCHES[e.pitch] * n / SAMPLE_RATE)
            assert np.abs(audio[n] - want).max() < 1e-5
    assert checked > 1000


def test_beep_train_timing_and_noise() -> None:
    spec = next(s for s in (generate_spec("standard", 41, "train", i) for i in range(100))
                if any(e.kind == "beep" for e in s.events) and not any(e.kind == "noise" for e in s.events))
    _, audio = render(spec, fps=1.0)
    beep = next(e for e in spec.events if e.kind == "beep")
    n = int(0.15 * SAMPLE_RATE)
    for k in range(int((beep.end - beep.start) / 0.3) - 1):
        a = int((beep.start + 0.3 * k) * SAMPLE_RATE)
        on = audio[a + 100:a + n - 100]
        off = audio[a + n + 100:a + 2 * n - 100]
        on_1k = np.abs(np.fft.rfft(on * np.hanning(on.size)))
        freqs = np.fft.rfftfreq(on.size, 1 / SAMPLE_RATE)
        assert abs(freqs[on_1k.argmax()] - BEEP_HZ) < 10
        # the off half only holds tones of other events; the beep itself is silent there
        others = [e for e in spec.events if e.kind == "tone" and e.start <= beep.start + 0.3 * k < e.end]
        if not others:
            assert np.abs(off).max() < 1e-6
    noise_spec = next(s for s in (generate_spec("easy", 41, "train", i) for i in range(100))
                      if [e.kind for e in s.events] == ["noise"])
    _, audio = render(noise_spec, fps=1.0)
    e = noise_spec.events[0]
    inside = audio[e.start * SAMPLE_RATE:e.end * SAMPLE_RATE]
    assert abs(inside.std() - 0.15 / np.sqrt(3)) < 0.01  # uniform(-0.15, 0.15) noise
    assert np.abs(np.delete(audio, np.s_[e.start * SAMPLE_RATE:e.end * SAMPLE_RATE])).max() == 0.0


# ---- encoding ------------------------------------------------------------------------------
def _av_spec() -> VideoSpec:
    """A short standard video with both a shape and a sound."""
    for i in range(200):
        s = generate_spec("standard", 0, "test", i)
        kinds = {e.kind for e in s.events}
        if s.duration <= 24 and kinds & {"shape", "flash"} and kinds & {"tone", "beep", "noise"}:
            return s
    raise AssertionError("no short audio-visual spec found")


def test_written_file_decodes_to_the_rendered_clip(tmp_path) -> None:
    from damo.media.decode import decode_clip

    spec = _av_spec()
    path = write_video(spec, tmp_path / "v.mkv")
    for fps in (1.0, 0.7):
        decoded, rendered = decode_clip(path, fps=fps, size=64), render_clip(spec, fps=fps, size=64)
        assert decoded.duration == pytest.approx(spec.duration)
        assert decoded.frames.shape == rendered.frames.shape
        assert np.allclose(decoded.times, rendered.times, atol=1e-6)
        err = np.abs(decoded.frames.astype(np.float64) - rendered.frames)
        assert err.mean() < 4.0, err.mean()  # H.264 crf 18 + yuv420p chroma at shape edges
        assert decoded.has_audio and decoded.audio.shape == rendered.audio.shape
        assert np.abs(decoded.audio - rendered.audio).max() <= 1.0 / 32767 + 1e-6  # PCM s16 quantisation
    with pytest.raises(ValueError, match=r"\.mkv or \.webm files; got 'v.mp4'"):
        write_video(spec, tmp_path / "v.mp4")


def test_webm_for_browsers_shows_the_same_timeline(tmp_path) -> None:
    import av

    from damo.card import is_procedural_video
    from damo.media.decode import decode_clip

    spec = _av_spec()
    path = write_video(spec, tmp_path / "v.webm", size=128)
    with av.open(str(path)) as f:
        assert [(st.type, st.codec_context.name) for st in f.streams] == [("video", "vp8"), ("audio", "opus")]
    decoded, rendered = decode_clip(path, fps=1.0, size=64), render_clip(spec, fps=1.0, size=64)
    assert decoded.duration == pytest.approx(spec.duration, abs=0.05) and is_procedural_video(path)
    T = rendered.num_frames                     # Opus pads the track a few ms, which can add a last frame
    assert np.abs(decoded.frames[:T].astype(np.float64) - rendered.frames).mean() < 6.0
    loud = lambda a: np.abs(a.reshape(-1, 1600)).mean(1) > 0.05             # noqa: E731  which 0.1-s windows sound
    n = rendered.audio.size // 1600 * 1600
    assert (loud(decoded.audio[:n]) == loud(rendered.audio[:n])).mean() > 0.95


def test_synthesize_writes_splits(tmp_path) -> None:
    counts = synthesize(tmp_path / "ds", n=5, seed=9, difficulty="standard", val_n=2, test_n=2)
    root = tmp_path / "ds"
    meta = json.loads((root / "meta.json").read_text())
    assert meta["seed"] == 9 and meta["difficulty"] == "standard" and meta["counts"] == counts
    assert [counts[k]["videos"] for k in ("train", "val", "test")] == [5, 2, 2]
    train, val, test = (load_samples(root / f"{k}.jsonl") for k in ("train", "val", "test"))
    assert [s.to_dict() for s in train] == [s.to_dict() for s in generate_samples(5, 9)]
    assert counts["train"]["samples"] == len(train) and sum(counts["val"]["tasks"].values()) == len(val)
    assert all(s.video.startswith("synth://standard/9/val/") for s in val)
    videos = {s.video for s in test}
    assert len(videos) == 2
    for v in videos:
        assert v.startswith(str(root.resolve())) and v.endswith(".mkv")
    # splits are disjoint by video and the test samples keep the URI that regenerates them
    uris = [{s.meta["uri"] for s in split} for split in (train, val, test)]
    assert not (uris[0] & uris[1] or uris[0] & uris[2] or uris[1] & uris[2])
    t0 = test[0]
    assert [s.to_dict() for s in video_samples(spec_from_uri(t0.meta["uri"]), t0.video)
            ] == [s.to_dict() for s in test if s.video == t0.video]


def test_synthesize_with_stvg_adds_tubes_on_the_encoded_test_videos(tmp_path) -> None:
    counts = synthesize(tmp_path / "ds", n=3, seed=9, val_n=1, test_n=2, stvg=True)
    assert counts["test"]["tasks"].get("stvg", 0) > 0
    test = load_samples(tmp_path / "ds" / "test.jsonl")
    st = [s for s in test if s.task == "stvg"]
    assert st and all(s.video.endswith(".mkv") and s.meta["boxes"] for s in st)
    assert [s.to_dict() for s in load_samples(tmp_path / "ds" / "train.jsonl")] == \
        [s.to_dict() for s in generate_samples(3, 9, stvg=True)]


def test_one_scheme_registry_resolves_synthetic_videos_and_datasets(monkeypatch) -> None:
    from damo.data.dataset import load_dataset
    from damo.media import sources

    assert load_dataset("synth://easy?n=3&seed=0") == synth_samples("synth://easy?n=3&seed=0")
    clip = sources.load_video("synth://easy/0/train/0", fps=1.0, size=64)
    assert np.array_equal(clip.frames, render_clip("synth://easy/0/train/0", fps=1.0, size=64).frames)
    monkeypatch.setitem(sources.SCHEMES, "noise", sources.Scheme(video="damo.data.synthetic:render_clip"))
    with pytest.raises(ValueError, match="the noise:// scheme names videos only"):
        load_dataset("noise://x")
