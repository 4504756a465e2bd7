"""What happens in a procedural video: the constants, the event and video specs, and drawing a
spec from its seed (events placed on whole seconds, with distractors, repeats and overlaps)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from damo.spans import overlap

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


def _fits(cand: Event, placed: list[Event], overlap_ok: bool) -> bool:
    streams = set(STREAMS[cand.kind])
    for other in placed:
        shared = streams & set(STREAMS[other.kind])
        ov = overlap((cand.start, cand.end), (other.start, other.end))
        if shared and ov and not overlap_ok:
            return False
        # Two occurrences of one descriptor must be separated by at least one second,
        # otherwise they would read as a single longer occurrence.
        for sh, c, s, e in cand.visual_segments():
            for sh2, c2, s2, e2 in other.visual_segments():
                if (sh, c) == (sh2, c2) and overlap((s - 1, e + 1), (s2, e2)):
                    return False
        for snd, s, e in cand.audio_segments():
            for snd2, s2, e2 in other.audio_segments():
                if snd == snd2 and overlap((s - 1, e + 1), (s2, e2)):
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
            and overlap((cand.start, cand.end), (o.start, o.end))}
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
