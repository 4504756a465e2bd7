"""How frame tokens learn their time (``model.time_encoding``)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TimeEncoding:
    """How each frame token learns its time. ``sinusoid``: the model adds a learned map of a
    sinusoid of the seconds; ``timestamps``: Dynamic-VLM's "2.5s: " text before each frame token
    (section 5.3); ``tokens``: LLaVA-ST's LAPE time tokens (section 3.2), which also write the
    answer's text timestamps; all false: the frames' order only."""
    sinusoid: bool = False
    timestamps: bool = False
    tokens: bool = False


TIME_ENCODINGS = {"sinusoid": TimeEncoding(sinusoid=True), "timestamp": TimeEncoding(timestamps=True),
                  "lape": TimeEncoding(tokens=True), "none": TimeEncoding()}
