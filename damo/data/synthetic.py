"""Procedural audio-visual videos with exact ground truth: the embedded default training set.

A video is a dark 64x64 canvas on which coloured shapes (square, circle, triangle in red,
green, blue, yellow) are visible on known intervals, possibly moving or changing colour,
while a mono 16 kHz track plays steady tones (300/700/1500 Hz), beep trains (1000 Hz,
0.15 s on / 0.15 s off) and white-noise bursts. A "flash" is a shape visible exactly while a
beep train plays. From the event list we write the canonical samples (:mod:`damo.data.schema`):
grounding, multi-moment grounding, dense captions and grounded QA. The task mix mirrors the
temporally grounded QA of DaMO (arXiv 2506.11558) and the evidence-then-answer samples of
D2VLM (Zeng et al., "Factorized Learning for Temporally Grounded
Video-Language Models"); rendering the videos from a known event list, so every answer is
exact, is the approach of diagnostic synthetic video sets such as CLEVRER (Yi et al., ICLR 2020).

Time conventions (so that 1-fps grounding is exact):

- every event boundary is a whole second and an event covers ``[start, end)``;
- frame ``i`` at sampling rate ``fps`` shows the scene at time ``(i + 0.5) / fps`` (the
  centre of its window, the :class:`damo.media.Clip` contract), so at 1 fps frame ``i`` shows
  an event iff ``start <= i < end`` and the span ``[start, end]`` is exactly its frames;
- the audio has ``ceil(duration * 16000)`` samples, sample 0 at t = 0.

A video is named by a URI ``synth://{difficulty}/{seed}/{split}/{index}``; the URI alone
regenerates the spec (a per-video RNG is derived from ``(seed, split, index, difficulty)``
with :class:`numpy.random.SeedSequence`, so video ``k`` never depends on how many videos
are drawn). Training renders clips in memory with :func:`render_clip`; only the test split
of :func:`synthesize` is encoded to real files, whose decoded frames agree with the
in-memory render within codec tolerance.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from damo.card import PROCEDURAL_TAG
from damo.data.schema import Sample, save_samples
from damo.model.processing import time_key
from damo.media import SAMPLE_RATE, Clip

GENERATOR_VERSION = "1.0"

DIFFICULTIES = ("easy", "standard", "hard")
SPLITS = ("train", "val", "test")

SHAPES = ("square", "circle", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
}
BACKGROUND = (18, 18, 26)
PITCHES = {"low": 300.0, "mid": 700.0, "high": 1500.0}
BEEP_HZ = 1000.0
BEEP_ON, BEEP_PERIOD = 0.15, 0.30
AMPLITUDE = {"tone": 0.25, "beep": 0.25, "noise": 0.15}
CANVAS = 64                 # geometry is stored in pixels of a 64x64 canvas
MIN_DURATION, MAX_DURATION = 8, 64
MIN_EVENT, MAX_EVENT = 2, 12
FILE_FPS = 8                # frame rate of encoded files

# What each event kind occupies: the visual stream (a shape on screen), the audio stream, or both.
STREAMS = {"shape": ("visual",), "tone": ("audio",), "beep": ("audio",), "noise": ("audio",),
           "flash": ("visual", "audio")}
MODALITY = {"shape": "visual", "tone": "audio", "beep": "audio", "noise": "audio", "flash": "audio-visual"}
KIND_WEIGHTS = {"shape": 0.35, "tone": 0.25, "beep": 0.12, "noise": 0.10, "flash": 0.18}

# Knobs per difficulty. `plant`: chance that a new one-stream event is placed to overlap an
# event of the other stream (material for composite and cross-modal QA queries).
DIFFICULTY = {
    "easy": dict(n_events=(1, 2), distractor=0.0, repeat=0.0, moving=0.2, change=0.0, overlap=False, plant=0.0),
    "standard": dict(n_events=(3, 5), distractor=0.35, repeat=0.25, moving=0.4, change=0.0, overlap=False,
                     plant=0.5),
    "hard": dict(n_events=(5, 8), distractor=0.35, repeat=0.25, moving=0.5, change=0.5, overlap=True, plant=0.5),
}


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """One event on whole seconds ``[start, end)``.

    ``kind`` is shape | tone | beep | noise | flash. Shapes and flashes carry geometry in
    64-px canvas units (centre moves linearly from ``(x0, y0)`` to ``(x1, y1)`` over the
    interval); a shape may turn ``colour2`` at ``change_at``. Tones carry a ``pitch``; noise
    bursts carry their own ``noise_seed`` so the waveform is reproducible.
    """
    kind: str
    start: int
    end: int
    shape: str = ""
    colour: str = ""
    colour2: str = ""
    change_at: int = -1
    pitch: str = ""
    size: int = 0
    x0: float = 0.0
    y0: float = 0.0
    x1: float = 0.0
    y1: float = 0.0
    lane: int = -1
    noise_seed: int = 0

    @property
    def modality(self) -> str:
        return MODALITY[self.kind]

    @property
    def moving(self) -> bool:
        return (self.x0, self.y0) != (self.x1, self.y1)

    @property
    def sound(self) -> str:
        """The audio descriptor a query names ("" for a silent shape)."""
        return {"tone": f"{self.pitch} tone", "beep": "beep", "noise": "noise burst", "flash": "beep"}.get(self.kind, "")

    def visual_segments(self) -> list[tuple[str, str, int, int]]:
        """(shape, colour, start, end) per colour interval; a colour change makes two."""
        if "visual" not in STREAMS[self.kind]:
            return []
        if self.change_at < 0:
            return [(self.shape, self.colour, self.start, self.end)]
        return [(self.shape, self.colour, self.start, self.change_at),
                (self.shape, self.colour2, self.change_at, self.end)]

    def audio_segments(self) -> list[tuple[str, int, int]]:
        return [(self.sound, self.start, self.end)] if "audio" in STREAMS[self.kind] else []

    def to_dict(self) -> dict:
        d = asdict(self)
        d["modality"] = self.modality
        return d


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render one video; regenerated exactly from its URI."""
    difficulty: str
    seed: int
    split: str
    index: int
    duration: int
    events: tuple[Event, ...] = field(default_factory=tuple)

    @property
    def uri(self) -> str:
        return make_uri(self.difficulty, self.seed, self.split, self.index)


def vocabulary() -> dict[str, list[str]]:
    """The events a model trained on these videos has seen, in the words of its questions and answers."""
    return {"shapes": list(SHAPES), "colours": list(COLOURS),
            "sounds": [f"{p} tone" for p in PITCHES] + ["beep", "noise burst"],
            "events": ["a shape on screen (still or moving, possibly changing colour)", "a tone, beep or noise burst",
                       "a shape flashing with the beep"]}


def make_uri(difficulty: str, seed: int, split: str, index: int) -> str:
    return f"synth://{difficulty}/{seed}/{split}/{index}"


def is_synth_uri(s: str) -> bool:
    """True for a video URI ``synth://difficulty/seed/split/index`` (not a dataset spec)."""
    if not isinstance(s, str) or not s.startswith("synth://") or "?" in s:
        return False
    parts = s[len("synth://"):].split("/")
    return (len(parts) == 4 and parts[0] in DIFFICULTIES and parts[2] in SPLITS
            and parts[1].lstrip("-").isdigit() and parts[3].isdigit())


def spec_from_uri(uri: str) -> VideoSpec:
    """Regenerate a video's spec from ``synth://{difficulty}/{seed}/{split}/{index}``."""
    if not is_synth_uri(uri):
        raise ValueError(
            f"{uri!r} is not a synthetic video URI; expected synth://DIFFICULTY/SEED/SPLIT/INDEX with "
            f"DIFFICULTY in {DIFFICULTIES} and SPLIT in {SPLITS} (dataset specs like "
            f"synth://standard?n=100 go to synth_samples)")
    difficulty, seed, split, index = uri[len("synth://"):].split("/")
    return generate_spec(difficulty, int(seed), split, int(index))


def _seed_sequence(difficulty: str, seed: int, split: str, index: int) -> np.random.SeedSequence:
    # Non-negative entropy words: SeedSequence rejects negative ints, so fold the seed.
    return np.random.SeedSequence([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, SPLITS.index(split), index,
                                   DIFFICULTIES.index(difficulty)])


def _rngs(difficulty: str, seed: int, split: str, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for the spec and for the queries of one video."""
    spec_ss, query_ss = _seed_sequence(difficulty, seed, split, index).spawn(2)
    return np.random.default_rng(spec_ss), np.random.default_rng(query_ss)


def _check_args(difficulty: str, split: str, index: int) -> None:
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; choose one of {DIFFICULTIES}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if index < 0:
        raise ValueError(f"video index must be >= 0, got {index}")


def generate_spec(difficulty: str, seed: int, split: str, index: int) -> VideoSpec:
    """Draw one video's events. Deterministic in (difficulty, seed, split, index)."""
    _check_args(difficulty, split, index)
    rng, _ = _rngs(difficulty, seed, split, index)
    return _draw_spec(rng, difficulty, seed, split, index)


def _draw_spec(rng: np.random.Generator, difficulty: str, seed: int, split: str, index: int) -> VideoSpec:
    knobs = DIFFICULTY[difficulty]
    duration = int(rng.integers(MIN_DURATION, MAX_DURATION + 1))
    lo, hi = knobs["n_events"]
    n_target = int(rng.integers(lo, hi + 1))
    kinds, weights = list(KIND_WEIGHTS), np.array(list(KIND_WEIGHTS.values()))
    placed: list[Event] = []
    for _ in range(n_target):
        u = rng.random()
        if placed and u < knobs["distractor"]:
            wish = _distractor(rng, placed[int(rng.integers(len(placed)))])
        elif placed and u < knobs["distractor"] + knobs["repeat"]:
            wish = _repeat(placed[int(rng.integers(len(placed)))])
        else:
            wish = _fresh(rng, kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))])
        covered = {st for e in placed for st in STREAMS[e.kind]}
        if difficulty != "easy" and len(placed) == n_target - 1 and len(covered) == 1:
            # The last slot fills the stream nobody used yet, so most videos mix sight and sound.
            missing = [k for k in kinds if not set(STREAMS[k]) & covered]
            wish = _fresh(rng, missing[int(rng.integers(len(missing)))])
        if difficulty == "easy":
            wish = _make_unique(rng, wish, placed)
        ev = _place(rng, wish, placed, duration, knobs)
        if ev is not None:
            placed.append(ev)
    placed.sort(key=_event_order)
    return VideoSpec(difficulty, seed, split, index, duration, tuple(placed))


def _event_order(e: Event) -> tuple:
    return (e.start, e.end, list(KIND_WEIGHTS).index(e.kind), e.shape, e.colour, e.pitch)


def _fresh(rng: np.random.Generator, kind: str) -> dict:
    wish: dict = {"kind": kind}
    if kind in ("shape", "flash"):
        wish["shape"] = SHAPES[int(rng.integers(len(SHAPES)))]
        wish["colour"] = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    if kind == "tone":
        wish["pitch"] = list(PITCHES)[int(rng.integers(len(PITCHES)))]
    return wish


def _distractor(rng: np.random.Generator, ev: Event) -> dict:
    """Same shape in another colour, or the same tone at another pitch."""
    if ev.kind in ("shape", "flash"):
        others = [c for c in COLOURS if c not in (ev.colour, ev.colour2)]
        return {"kind": "shape", "shape": ev.shape, "colour": others[int(rng.integers(len(others)))]}
    if ev.kind == "tone":
        others = [p for p in PITCHES if p != ev.pitch]
        return {"kind": "tone", "pitch": others[int(rng.integers(len(others)))]}
    return _fresh(rng, "beep" if ev.kind == "noise" else "noise")


def _repeat(ev: Event) -> dict:
    """A second occurrence of an existing event (material for multi-moment queries and counting)."""
    return {"kind": ev.kind, "shape": ev.shape, "colour": ev.colour, "pitch": ev.pitch}


def _make_unique(rng: np.random.Generator, wish: dict, placed: list[Event]) -> dict:
    """Easy videos have no two events sharing a descriptor (no repeats, no distractor confusions)."""
    sounds = {e.sound for e in placed if e.sound}
    looks = {(e.shape, e.colour) for e in placed if e.shape}
    for _ in range(20):
        probe = Event(kind=wish["kind"], start=0, end=1, shape=wish.get("shape", ""),
                      colour=wish.get("colour", ""), pitch=wish.get("pitch", ""))
        if probe.sound not in sounds and (not probe.shape or (probe.shape, probe.colour) not in looks):
            return wish
        wish = _fresh(rng, list(KIND_WEIGHTS)[int(rng.integers(len(KIND_WEIGHTS)))])
    return wish


def _overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    return max(0, min(a1, b1) - max(a0, b0))


def _fits(cand: Event, placed: list[Event], overlap_ok: bool) -> bool:
    streams = set(STREAMS[cand.kind])
    for other in placed:
        shared = streams & set(STREAMS[other.kind])
        ov = _overlap(cand.start, cand.end, other.start, other.end)
        if shared and ov and not overlap_ok:
            return False
        # Two occurrences of one descriptor must be separated by at least one second,
        # otherwise they would read as a single longer occurrence.
        for sh, c, s, e in cand.visual_segments():
            for sh2, c2, s2, e2 in other.visual_segments():
                if (sh, c) == (sh2, c2) and _overlap(s - 1, e + 1, s2, e2):
                    return False
        for snd, s, e in cand.audio_segments():
            for snd2, s2, e2 in other.audio_segments():
                if snd == snd2 and _overlap(s - 1, e + 1, s2, e2):
                    return False
    if overlap_ok:
        # At most two concurrent events per stream (shapes get one lane each so none is hidden).
        for t in range(cand.start, cand.end):
            for st in streams:
                busy = [o for o in placed if st in STREAMS[o.kind] and o.start <= t < o.end]
                if len(busy) >= 2:
                    return False
    return True


def _free_lane(cand: Event, placed: list[Event]) -> int | None:
    """A screen half no time-overlapping shape uses, or None if both are taken."""
    used = {o.lane for o in placed if "visual" in STREAMS[o.kind]
            and _overlap(cand.start, cand.end, o.start, o.end)}
    return next((lane for lane in (0, 1) if lane not in used), None)


def _place(rng: np.random.Generator, wish: dict, placed: list[Event], duration: int, knobs: dict) -> Event | None:
    kind = wish["kind"]
    max_len = max(MIN_EVENT, min(MAX_EVENT, duration // 2))
    plant = [o for o in placed if not set(STREAMS[kind]) & set(STREAMS[o.kind])]
    plant_here = bool(plant) and len(STREAMS[kind]) == 1 and rng.random() < knobs["plant"]
    for _ in range(40):
        length = int(rng.integers(MIN_EVENT, max_len + 1))
        if plant_here:
            # Start somewhere that overlaps a random event of the other stream by >= 1 s.
            host = plant[int(rng.integers(len(plant)))]
            lo, hi = max(0, host.start - length + 1), min(duration - length, host.end - 1)
            if hi < lo:
                plant_here = False
                continue
            start = int(rng.integers(lo, hi + 1))
        else:
            start = int(rng.integers(0, duration - length + 1))
        ev = Event(kind=kind, start=start, end=start + length, shape=wish.get("shape", ""),
                   colour=wish.get("colour", ""), pitch=wish.get("pitch", ""))
        if kind == "shape" and length >= 4 and rng.random() < knobs["change"]:
            others = [c for c in COLOURS if c != ev.colour]
            ev = replace(ev, colour2=others[int(rng.integers(len(others)))],
                         change_at=int(rng.integers(start + 2, start + length - 1)))
        if not _fits(ev, placed, knobs["overlap"]):
            continue
        lane = _free_lane(ev, placed) if knobs["overlap"] else -1
        if lane is None:
            continue
        if kind == "noise":
            ev = replace(ev, noise_seed=int(rng.integers(2**31)))
        if "visual" in STREAMS[kind]:
            ev = _geometry(rng, ev, lane, knobs["moving"])
        return ev
    return None


def _geometry(rng: np.random.Generator, ev: Event, lane: int, p_moving: float) -> Event:
    """Size and a start/end centre inside the frame (or inside the lane's half when shapes overlap)."""
    size = int(rng.integers(16, 23))
    r = size / 2
    if lane < 0:
        xlo, xhi = r + 2, CANVAS - r - 2
    else:
        half = CANVAS // 2
        xlo, xhi = lane * half + r + 1, (lane + 1) * half - r - 1
    ylo, yhi = r + 2, CANVAS - r - 2
    x0, y0 = float(rng.uniform(xlo, xhi)), float(rng.uniform(ylo, yhi))
    x1, y1 = x0, y0
    if rng.random() < p_moving:
        x1, y1 = float(rng.uniform(xlo, xhi)), float(rng.uniform(ylo, yhi))
    return replace(ev, size=size, lane=lane, x0=round(x0, 2), y0=round(y0, 2), x1=round(x1, 2), y1=round(y1, 2))


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def num_frames(duration: float, fps: float) -> int:
    """``T = max(1, ceil(duration * fps))``: one frame per 1/fps window, as the decoder counts them."""
    return max(1, math.ceil(duration * fps - 1e-6))


def sample_times(duration: float, fps: float) -> np.ndarray:
    """When each of the ``T`` frames is shown: the picture of the encoded file (8 fps) nearest the
    window centre ``(i + 0.5) / fps``, ties to the earlier one, as a decoder returns it.

    At fps 1, 2 and 4 every centre is a multiple of 1/8 s, so frame ``i`` is exactly the scene at
    ``(i + 0.5) / fps``; a centre past the last picture (``duration - 1/8``) shows that picture.
    """
    centres = (np.arange(num_frames(duration, fps), dtype=np.float64) + 0.5) / fps
    picture = np.ceil(centres * FILE_FPS - 0.5 - 1e-9)  # nearest picture index, ties to the earlier
    return np.clip(picture, 0, math.ceil(duration * FILE_FPS) - 1) / FILE_FPS


def render(spec: VideoSpec, fps: float, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``(T, size, size, 3)`` uint8 (frame i = the scene at ``(i + 0.5) / fps``) and audio.

    ``T = ceil(duration * fps)``; see :func:`sample_times` for rates whose centres fall between the
    encoded file's pictures. The audio is float32 mono at 16 kHz, ``ceil(duration * 16000)`` samples.
    """
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if size < 8:
        raise ValueError(f"frame size must be >= 8 pixels, got {size}")
    return render_frames(spec, sample_times(spec.duration, fps), size), render_audio(spec)


def render_frames(spec: VideoSpec, times: np.ndarray, size: int = 64) -> np.ndarray:
    """The scene at each of ``times`` (seconds), ``(T, size, size, 3)`` uint8.

    Shapes are drawn with boolean masks on a coordinate grid at ``k = ceil(64 / size)`` times
    the output resolution and block-averaged, so small outputs are anti-aliased like a
    decoder's area downscale of the 64x64 original.
    """
    k = max(1, math.ceil(CANVAS / size))
    hi = size * k
    T = len(times)
    frames = np.empty((T, hi, hi, 3), np.float32)
    frames[:] = np.asarray(BACKGROUND, np.float32)
    # Pixel centres in canvas units.
    coords = (np.arange(hi, dtype=np.float32) + 0.5) * (CANVAS / hi)
    yy, xx = coords[:, None], coords[None, :]  # (hi, 1), (1, hi)
    for ev in spec.events:
        if "visual" not in STREAMS[ev.kind]:
            continue
        idx = np.nonzero((times >= ev.start) & (times < ev.end))[0]
        if idx.size == 0:
            continue
        t = times[idx]
        frac = ((t - ev.start) / (ev.end - ev.start)).astype(np.float32)
        cx = (ev.x0 + frac * (ev.x1 - ev.x0))[:, None, None]  # (Ta, 1, 1)
        cy = (ev.y0 + frac * (ev.y1 - ev.y0))[:, None, None]
        dx, dy = xx[None] - cx, yy[None] - cy                  # (Ta, hi, hi) by broadcasting
        r = ev.size / 2
        if ev.shape == "square":
            mask = (np.abs(dx) <= r) & (np.abs(dy) <= r)
        elif ev.shape == "circle":
            mask = dx * dx + dy * dy <= r * r
        else:  # triangle, apex up: half-width grows linearly from 0 at the top to r at the base
            mask = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
        colour = np.tile(np.asarray(COLOURS[ev.colour], np.float32), (idx.size, 1))  # (Ta, 3)
        if ev.change_at >= 0:
            colour[t >= ev.change_at] = COLOURS[ev.colour2]
        frames[idx] = np.where(mask[..., None], colour[:, None, None, :], frames[idx])
    if k > 1:
        # k x k block mean as a sum of k^2 strided views (much faster than a 6-d reshape + mean)
        frames = sum(frames[:, a::k, b::k] for a in range(k) for b in range(k)) / (k * k)  # (T, size, size, 3)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


RAMP = int(0.005 * SAMPLE_RATE)  # 5 ms fades keep onsets click-free (clean spectra)


def _second_template(kind: str, pitch: str = "") -> np.ndarray:
    """One second of a tone or beep train starting on a whole second, float32.

    Every pitch (300/700/1500 Hz, beep carrier 1000 Hz) makes a whole number of cycles per
    second and the beep period (0.3 s = 4800 samples) divides 3 s, so a sound that starts on a
    whole second is these samples tiled (a 3 s template for beeps): exact and cheap.
    """
    if kind == "tone":
        t = np.arange(SAMPLE_RATE, dtype=np.float64) / SAMPLE_RATE
        return (AMPLITUDE["tone"] * np.sin(2 * np.pi * PITCHES[pitch] * t)).astype(np.float32)
    t = np.arange(3 * SAMPLE_RATE, dtype=np.float64) / SAMPLE_RATE
    phase = t % BEEP_PERIOD
    pulse = np.clip(np.minimum(phase, BEEP_ON - phase) * SAMPLE_RATE / RAMP, 0.0, 1.0)
    return (AMPLITUDE["beep"] * pulse * np.sin(2 * np.pi * BEEP_HZ * t)).astype(np.float32)


_TEMPLATES = {("tone", p): _second_template("tone", p) for p in PITCHES} | {("beep", ""): _second_template("beep")}


def render_audio(spec: VideoSpec) -> np.ndarray:
    """The mixed mono waveform, float32 in [-1, 1], ``ceil(duration * 16000)`` samples."""
    n = math.ceil(spec.duration * SAMPLE_RATE)
    audio = np.zeros(n, np.float32)
    fade = (np.arange(RAMP, dtype=np.float32) + 1) / RAMP  # (RAMP,) linear fade-in
    for ev in spec.events:
        if "audio" not in STREAMS[ev.kind]:
            continue
        n0, n1 = ev.start * SAMPLE_RATE, min(n, ev.end * SAMPLE_RATE)
        if ev.kind == "noise":
            rng = np.random.default_rng(ev.noise_seed)
            wave = (2 * AMPLITUDE["noise"]) * rng.random(n1 - n0, dtype=np.float32) - AMPLITUDE["noise"]
        else:  # a tone, or a beep train (plain or with a flash) starting "on" at the event start
            template = _TEMPLATES[("tone", ev.pitch) if ev.kind == "tone" else ("beep", "")]
            wave = np.resize(template, n1 - n0)  # tiles the template
        wave[:RAMP] *= fade
        wave[-RAMP:] *= fade[::-1]
        audio[n0:n1] += wave
    return np.clip(audio, -1.0, 1.0)


def render_clip(uri_or_spec: str | VideoSpec, fps: float = 1.0, size: int = 64) -> Clip:
    """The clip a decoder would return for the encoded video, rendered without any codec."""
    spec = spec_from_uri(uri_or_spec) if isinstance(uri_or_spec, str) else uri_or_spec
    frames, audio = render(spec, fps, size)
    times = sample_times(spec.duration, fps)
    return Clip(frames=frames, times=times, audio=audio, duration=float(spec.duration), fps=float(fps),
                has_audio=True, source=spec.uri)


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def write_video(spec: VideoSpec, path: str | Path, size: int = 64) -> Path:
    """Encode a real file: Matroska, H.264 (crf 18, yuv420p, 8 fps, keyframe every 8 frames), PCM s16le 16 kHz.

    File frame ``j`` (pts ``j / 8``) shows the scene at ``j / 8``, so the frame on screen at
    ``i + 0.5`` is the scene at ``i + 0.5``, exactly what :func:`render` gives at 1 fps. PCM keeps
    audio sample-exact (AAC would add 48 ms of priming).
    """
    import av

    path = Path(path)
    if path.suffix != ".mkv":
        raise ValueError(f"write_video writes Matroska; give a path ending in .mkv, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    n_frames = int(spec.duration * FILE_FPS)
    frames = render_frames(spec, np.arange(n_frames) / FILE_FPS, size)
    pcm = np.clip(np.rint(render_audio(spec) * 32767.0), -32768, 32767).astype(np.int16)
    tmp = path.with_name(path.name + ".tmp.mkv")
    with av.open(str(tmp), mode="w", format="matroska") as out:
        out.metadata["comment"] = f"{PROCEDURAL_TAG} {spec.uri}"     # tells a procedural file from a real one
        vs = out.add_stream("libx264", rate=FILE_FPS)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        vs.time_base = Fraction(1, FILE_FPS)
        vs.codec_context.time_base = Fraction(1, FILE_FPS)
        vs.options = {"crf": "18", "g": str(FILE_FPS), "keyint_min": str(FILE_FPS), "sc_threshold": "0",
                      "bf": "0", "threads": "1"}
        aus = out.add_stream("pcm_s16le", rate=SAMPLE_RATE, layout="mono")
        for j in range(n_frames):
            frame = av.VideoFrame.from_ndarray(frames[j], format="rgb24")
            frame.pts = j
            frame.time_base = Fraction(1, FILE_FPS)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        chunk = 4096
        for a in range(0, pcm.size, chunk):
            piece = pcm[a:a + chunk]
            af = av.AudioFrame.from_ndarray(piece[None, :], format="s16", layout="mono")  # (1, n)
            af.sample_rate = SAMPLE_RATE
            af.pts = a
            af.time_base = Fraction(1, SAMPLE_RATE)
            for packet in aus.encode(af):
                out.mux(packet)
        for packet in aus.encode():
            out.mux(packet)
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------
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
                 if v.event != a.event and _overlap(v.start, v.end, a.start, a.end) > 0]
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
        vs = [o for k, os in occ.items() if k[0] == "v" for o in os if _overlap(o.start, o.end, a.start, a.end) > 0]
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
        as_ = [o for k, os in occ.items() if k[0] == "a" for o in os if _overlap(o.start, o.end, v.start, v.end) > 0]
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


def generate_samples(n: int, seed: int, difficulty: str = "standard", split: str = "train",
                     start: int = 0, stvg: bool = False) -> list[Sample]:
    """Samples of videos ``start .. start + n - 1`` of one split, in memory (videos as URIs);
    ``stvg`` adds each video's spatio-temporal grounding queries (:func:`stvg_samples`)."""
    if n < 0:
        raise ValueError(f"number of videos must be >= 0, got {n}")
    _check_args(difficulty, split, start)
    out = []
    for i in range(start, start + n):
        spec = generate_spec(difficulty, seed, split, i)
        out += video_samples(spec) + (stvg_samples(spec) if stvg else [])
    return out


def synth_samples(spec: str) -> list[Sample]:
    """Samples from a dataset spec ``synth://DIFFICULTY?n=N&seed=S&split=SPLIT[&tasks=a,b][&stvg=1]``.

    Defaults: n=1000, seed=0, split=train, all tasks, no spatio-temporal grounding queries
    (``stvg=1`` adds them). Used by training recipes; no files.
    """
    if not spec.startswith("synth://"):
        raise ValueError(f"{spec!r} is not a synthetic dataset spec; write e.g. synth://standard?n=4000&seed=0")
    body = spec[len("synth://"):]
    difficulty, _, query = body.partition("?")
    difficulty = difficulty.rstrip("/")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"{spec!r}: unknown difficulty {difficulty!r}; choose one of {DIFFICULTIES}")
    params = {"n": "1000", "seed": "0", "split": "train", "tasks": "", "stvg": "0"}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or key not in params:
            raise ValueError(f"{spec!r}: bad parameter {item!r}; allowed: n=INT, seed=INT, split=train|val|test, "
                             f"tasks=TASK[,TASK], stvg=0|1")
        params[key] = value
    try:
        n, seed = int(params["n"]), int(params["seed"])
    except ValueError:
        raise ValueError(f"{spec!r}: n and seed must be integers") from None
    if params["stvg"] not in ("0", "1"):
        raise ValueError(f"{spec!r}: stvg must be 0 or 1, got {params['stvg']!r}")
    stvg = params["stvg"] == "1"
    samples = generate_samples(n, seed, difficulty, params["split"], stvg=stvg)
    if params["tasks"]:
        tasks = set(params["tasks"].split(","))
        known = {"grounding", "multi_grounding", "dense_caption", "grounded_qa"} | ({"stvg"} if stvg else set())
        if not tasks <= known:
            raise ValueError(f"{spec!r}: unknown tasks {sorted(tasks - known)}; synthetic data has {sorted(known)}")
        samples = [s for s in samples if s.task in tasks]
    return samples


def _counts(samples: list[Sample], n_videos: int) -> dict:
    return {"videos": n_videos, "samples": len(samples),
            "tasks": dict(sorted(Counter(s.task for s in samples).items())),
            "kinds": dict(sorted(Counter(s.meta["kind"] for s in samples).items())),
            "modalities": dict(sorted(Counter(s.meta["modality"] for s in samples).items()))}


def synthesize(out_dir: str | Path, n: int, seed: int, difficulty: str = "standard", val_n: int | None = None,
               test_n: int | None = None, stvg: bool = False) -> dict:
    """Write a dataset: ``train.jsonl`` and ``val.jsonl`` (videos as synth:// URIs), ``test.jsonl``
    whose videos are encoded files ``videos/test/NNNNN.mkv`` (stored as absolute paths, so the
    JSONL works from any working directory), and ``meta.json``. Returns counts per split.
    ``stvg`` adds the spatio-temporal grounding queries (:func:`stvg_samples`).

    Defaults: ``val_n = max(1, n // 10)``, ``test_n = 120``.
    """
    if n < 1:
        raise ValueError(f"n (training videos) must be >= 1, got {n}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; choose one of {DIFFICULTIES}")
    out = Path(out_dir).resolve()
    sizes = {"train": n, "val": max(1, n // 10) if val_n is None else val_n, "test": 120 if test_n is None else test_n}
    counts = {}
    for split, k in sizes.items():
        samples = []
        for i in range(k):
            spec = generate_spec(difficulty, seed, split, i)
            video = None
            if split == "test":
                video = str(write_video(spec, out / "videos" / "test" / f"{i:05d}.mkv"))
            samples.extend(video_samples(spec, video) + (stvg_samples(spec, video) if stvg else []))
        save_samples(out / f"{split}.jsonl", samples)
        counts[split] = _counts(samples, k)
    meta = {"generator": "damo.data.synthetic", "version": GENERATOR_VERSION, "seed": seed,
            "difficulty": difficulty, "video_uri": "synth://{difficulty}/{seed}/{split}/{index}",
            "test_videos": "absolute paths to videos/test/*.mkv", "counts": counts}
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / "meta.json")
    return counts


# --------------------------------------------------------------------------------------------
# Spatio-temporal grounding (STVG)
# --------------------------------------------------------------------------------------------
def shape_boxes(spec: VideoSpec, times: np.ndarray) -> dict[int, np.ndarray]:
    """Bounding box of every visual event at ``times`` (seconds): ``{event index: (T, 4)}``.

    Boxes are ``[x0, y0, x1, y1]`` in [0, 1] of the canvas, NaN where the event is not on
    screen. They come from the renderer's geometry (:func:`render_frames`): the centre moves
    linearly over ``[start, end)`` and every shape (square, circle, apex-up triangle) spans
    ``centre +- size / 2`` on both axes.
    """
    times = np.asarray(times, dtype=np.float64)
    out: dict[int, np.ndarray] = {}
    for i, ev in enumerate(spec.events):
        if "visual" not in STREAMS[ev.kind]:
            continue
        box = np.full((len(times), 4), np.nan)
        on = (times >= ev.start) & (times < ev.end)
        frac = (times[on] - ev.start) / (ev.end - ev.start)
        cx, cy = ev.x0 + frac * (ev.x1 - ev.x0), ev.y0 + frac * (ev.y1 - ev.y0)
        r = ev.size / 2
        box[on] = np.clip(np.stack([cx - r, cy - r, cx + r, cy + r], 1) / CANVAS, 0.0, 1.0)
        out[i] = box
    return out


STVG_TEMPLATES = {
    "stvg_appear": ("where and when is the {look} on screen?", "when and where does the {look} appear?",
                    "find the {look}: where is it and when?"),
    "stvg_sound": ("where is the {look} while the {sound} {verb}s?",
                   "while the {sound} {verb}s, where is the {look}?"),
    "stvg_flash": ("where is the {look} when it flashes with the beep?",
                   "where and when does the {look} flash to the beep?"),
}


def _region(box: np.ndarray) -> str:
    """Coarse 3 x 3 screen region of a box centre, in words ("top left", "centre", ...)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    col = ("left", "centre", "right")[min(2, int(cx * 3))]
    row = ("top", "middle", "bottom")[min(2, int(cy * 3))]
    return "centre" if (row, col) == ("middle", "centre") else f"{row} {col}"


def stvg_samples(spec: VideoSpec, video: str | None = None, fps: float = 1.0) -> list[Sample]:
    """Spatio-temporal grounding questions (where and when) with exact tubes.

    One query per kind that applies, in a fixed kind order: a uniquely described shape
    (``stvg_appear``), the one shape on screen during a unique sound (``stvg_sound``; the tube
    is the overlap), a flashing shape (``stvg_flash``). The tube is ``spans = [[s, e]]`` plus
    ``meta["boxes"] = {time_key(t): [x0, y0, x1, y1]}`` at the frame times (``fps``, as
    :func:`sample_times`) inside ``[s, e)``. The answer says in words where the shape is, so the
    samples also train through the ordinary text collator (task ``"stvg"``). Template choices
    come from their own seeded stream, so the other samples of the video do not change.
    """
    _check_args(spec.difficulty, spec.split, spec.index)
    rng = np.random.default_rng(_seed_sequence(spec.difficulty, spec.seed, spec.split, spec.index).spawn(3)[2])
    ev = spec.events
    occ = _occurrences(spec)
    unique = [v[0] for v in occ.values() if len(v) == 1]
    uv = [o for o in unique if o.key[0] == "v"]
    ua = [o for o in unique if o.key[0] == "a"]
    times = sample_times(spec.duration, fps)
    boxes = shape_boxes(spec, times)
    queries: list[tuple[str, str, _Occ, int, int]] = []     # (kind, query, visual occurrence, start, end)

    def tpl(kind: str, **words: str) -> str:
        return _pick(rng, STVG_TEMPLATES[kind]).format(**words)

    cands = [o for o in uv if ev[o.event].kind == "shape"]
    if cands:
        o = _pick(rng, cands)
        queries.append(("stvg_appear", tpl("stvg_appear", look=_look(o.key)), o, o.start, o.end))
    pairs = []
    for a in ua:
        vs = [o for k, os in occ.items() if k[0] == "v" for o in os if _overlap(o.start, o.end, a.start, a.end) > 0]
        if len(vs) == 1 and len(occ[vs[0].key]) == 1 and ev[a.event].kind != "flash":
            pairs.append((vs[0], a))
    if pairs:
        v, a = _pick(rng, pairs)
        queries.append(("stvg_sound", tpl("stvg_sound", look=_look(v.key), sound=a.key[1], verb=_verb(a.key[1])), v,
                        max(v.start, a.start), min(v.end, a.end)))
    cands = [o for o in uv if ev[o.event].kind == "flash"]
    if cands:
        o = _pick(rng, cands)
        queries.append(("stvg_flash", tpl("stvg_flash", look=_look(o.key)), o, o.start, o.end))

    events = [e.to_dict() for e in ev]
    out: list[Sample] = []
    for k, (kind, query, o, s, e) in enumerate(queries):
        inside = np.nonzero((times >= s) & (times < e))[0]
        if inside.size == 0:            # a sparse fps can step over a short overlap: no frame to ask about
            continue
        tube = {time_key(times[j]): [round(float(x), 4) for x in boxes[o.event][j]] for j in inside}
        first, last = boxes[o.event][inside[0]], boxes[o.event][inside[-1]]
        a, b = _region(first), _region(last)
        where = f"it moves from the {a} to the {b}" if a != b else f"it is at the {a}"
        out.append(Sample(
            id=f"{spec.split}-{spec.index:05d}-stvg{k}", video=video or spec.uri, duration=float(spec.duration),
            task="stvg", query=query, answer=where, spans=[[float(s), float(e)]], source="synthetic",
            meta={"modality": _modality([ev[o.event]]), "kind": kind, "targets": [o.event], "boxes": tube,
                  "fps": float(fps), "events": events, "video_index": spec.index,
                  "difficulty": spec.difficulty, "uri": spec.uri}))
    return out
