"""What a model sees and learns for one sample (``damo data render``).

A model's processor turns a canonical sample into the prompt, the frame times, the response and
every target; :func:`render_sample` lays them out for a person to read: the prompt text with its
special tokens, token counts, the sampled frame times, which frames each evidence token grounds
(and the soft targets it trains on), the LAPE coordinate tokens' anchors and the response text.
This is the answer to "which prompt and which time format does this checkpoint expect?".

The processor comes with a saved model, or is built from a model config by the ``damo data render``
command (with the LLM's own tokenizer when it is on this machine, else a stand-in of its vocabulary
size: the prompt text is exact, as the chat template is in the config, but tokens count one per word).
"""
from __future__ import annotations

import re

import numpy as np

from damo.data.collate import turns_of
from damo.data.schema import Sample
from damo.model import tokenizer as tk
from damo.model.compressors import STREAM_ORDERS
from damo.model.processing import DamoProcessor, VideoLayout, frame_targets

_VIDEO_RUN = re.compile(f"(?:{re.escape(tk.VIDEO)})+")


def collapse_video(text: str) -> str:
    """Runs of ``<video>`` placeholders written once with their count: ``[<video> x29]``."""
    return _VIDEO_RUN.sub(lambda m: f"[{tk.VIDEO} x{len(m.group()) // len(tk.VIDEO)}]", text)


def sample_times(processor: DamoProcessor, duration: float) -> list[float]:
    """The frame times the model samples from a video of ``duration`` seconds: frame ``i`` at
    ``(i + phase) / fps`` (:meth:`~damo.model.processing.DamoProcessor.sampling`; the decoder returns
    the frame nearest each)."""
    fps, phase = processor.sampling(duration)
    n = max(1, int(np.ceil(duration * fps - 1e-6)))
    return [round((i + phase) / fps, 6) for i in range(n)]


def video_parts(processor: DamoProcessor, num_frames: int, layout: VideoLayout) -> list[dict]:
    """The video's placeholders in prompt order: the bridge's fusion tokens, the frame tokens (the
    packer's fast stream) and the packer's slow stream, in ``stream_order``, with their counts."""
    n = -(-num_frames // layout.group)
    fast = [{"part": "frames", "tokens": n * layout.per_frame}]
    slow = [{"part": "slow", "tokens": layout.slow_tokens(n)}]
    order = STREAM_ORDERS[processor.config.stream_order]
    parts = [{"part": "bridge", "tokens": processor.config.video_tokens}] + order(fast, slow)
    return [x for x in parts if x["tokens"]]


def render_sample(processor: DamoProcessor, sample: Sample, times: list[float]) -> dict:
    """One sample as the model sees and learns it, sampled at ``times`` (seconds).

    ``prompt``: the generation prompt's text with its special tokens (placeholder runs collapsed,
    :func:`collapse_video`); ``video``: its placeholders part by part (:func:`video_parts`);
    ``frame_times``; ``targets``: one value per sampled frame, 1 where the first turn's ground truth
    covers the frame (what its first evidence token grounds, under the model's frame-time
    convention); ``evidence``: per ``<evi>`` the LLM frame tokens it grounds (target 1; frames when
    each token is one frame) and the targets it trains on; ``coordinates``: per LAPE token its two
    anchors and weights; ``response``: the learned text of every turn, each ended by the stop string
    (chat) or, the last one, by eos.
    """
    c, tok = processor.config, processor.tokenizer
    turns = turns_of(sample)
    lay = processor.layout(len(times))
    pieces, prompt_ids = processor.prompt_pieces(turns[0]["query"], times, lay)
    enc = processor.encode_turns(turns, np.asarray(times), sample.duration, lay, f"sample {sample.id}")
    n = len(turns)
    ends = [processor.chat.stop[0]] * n if processor.chat else [" "] * (n - 1) + [tok.eos_token]
    spans = turns[0]["spans"]
    return {
        "id": sample.id,
        "prompt": collapse_video("".join(pieces)),
        "prompt_tokens": len(prompt_ids),
        "video_tokens": prompt_ids.count(processor.video_id),
        "video": video_parts(processor, len(times), lay),
        "tokens": len(enc.ids),
        "frame_times": [float(t) for t in times],
        "frames_per_token": lay.group,
        "targets": frame_targets(spans, len(times), processor.sampling(sample.duration)[0],
                                 c.frame_times).astype(int).tolist(),
        "evidence": [{"frames": np.flatnonzero(y >= 1).tolist(), "trained": [round(float(v), 4) for v in y]}
                     for y in enc.evi_targets],
        "coordinates": [{"token": tok.convert_ids_to_tokens(enc.ids[p]),
                         "anchors": tok.convert_ids_to_tokens(list(a)), "weights": [round(float(w), 4) for w in ws]}
                        for p, a, ws in zip(enc.coord_pos, enc.coord_ids, enc.coord_w)],
        "response": "".join(processor.response(t, sample.duration) + e for t, e in zip(turns, ends)),
        "stop": list(processor.chat.stop) if processor.chat else [tok.eos_token],
    }


def format_render(r: dict, note: str) -> str:
    """:func:`render_sample`'s dict as text for a terminal."""
    lines = [f"sample {r['id']}  (tokenizer: {note})", "", "prompt:", r["prompt"], "",
             f"tokens: {r['prompt_tokens']} in the prompt ({r['video_tokens']} video placeholders: "
             + ", ".join(f"{x['part']} {x['tokens']}" for x in r["video"]) + f"), {r['tokens']} with the response",
             f"frame times ({len(r['frame_times'])}, {r['frames_per_token']} per LLM frame token): "
             + ", ".join(f"{t:g}" for t in r["frame_times"]),
             "frames the ground truth covers: " + "".join(str(y) for y in r["targets"])]
    lines += [f"<evi> {k}: frames {e['frames']}, trained on {e['trained']}" for k, e in enumerate(r["evidence"])]
    lines += [f"{x['token']}: {x['anchors'][0]} x {x['weights'][0]} + {x['anchors'][1]} x {x['weights'][1]}"
              for x in r["coordinates"]]
    lines += ["", "response (learned):", r["response"], f"stops at: {', '.join(r['stop'])}"]
    return "\n".join(lines)
