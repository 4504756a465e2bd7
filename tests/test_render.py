"""What a model sees and learns for one sample (``damo data render``), the papers' prompts through
their LLMs' chat templates, and where frames sit in time (``frame_times``)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from damo.cli import main
from damo.config import find
from damo.data.synthetic import render_clip
from damo.media.decode import decode_clip
from damo.model.attention import VIDEO_ATTENTION
from damo.model.configuration_damo import DamoConfig
from damo.model.modeling_damo import DamoModel
from damo.model.generation import generation_of, stop_ids, stop_length
from damo.model.processing import DamoProcessor, ProcessorConfig, frame_targets
from damo.model.tokenizer import train_tokenizer
from damo.pipeline import processor_of
from helpers import TINY_MODEL, clip, tiny_cfg

QUERY = "a person is putting a book on a shelf"
PHI3_PROMPT = ("<|system|>\nYou are a helpful AI assistant.<|end|>\n<|user|>\n{video}\n" + QUERY
               + "<|end|>\n<|assistant|>\n")


def chat_of(config: str) -> dict:
    return yaml.safe_load(find("configs", config).read_text())["chat"]


@pytest.fixture
def charades(tmp_path):
    """One Charades-STA sample: ground truth [3.0, 5.0] in a 10-s video (its file is not needed)."""
    path = tmp_path / "charades.jsonl"
    path.write_text(json.dumps({"id": "AO8RW_0", "video": "AO8RW", "duration": 10.0, "task": "grounding",
                                "query": QUERY, "answer": "", "spans": [[3.0, 5.0]], "source": "charades_sta"}) + "\n")
    return path


def render(capsys, *args) -> dict:
    assert main(["data", "render", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_paper_d2vlm_renders_the_official_prompt_frames_and_evidence_targets(charades, capsys):
    r = render(capsys, "--config", "paper-d2vlm", "--data", str(charades))
    assert r["frame_times"] == [float(i) for i in range(10)]
    assert r["targets"] == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert [e["frames"] for e in r["evidence"]] == [[3, 4, 5], [3, 4, 5]]       # grounding stage, then answer
    # 32 bridge tokens, then one token per frame where the official prompt has <image>
    assert r["prompt"] == PHI3_PROMPT.format(video="[<video> x42]")
    assert r["video"] == [{"part": "bridge", "tokens": 32}, {"part": "frames", "tokens": 10}]
    assert r["response"].startswith("<evi> </evi>") and r["response"].endswith("<evi>.<|end|>")
    assert r["stop"] == ["<|end|>"]


def test_the_tiny_default_keeps_window_centres_and_its_plain_prompt(charades, capsys):
    r = render(capsys, "--config", "tiny", "--data", str(charades))
    assert r["frame_times"] == [i + 0.5 for i in range(10)]
    assert r["targets"] == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
    assert r["prompt"] == f"<bos><|user|> {QUERY}[<video> x18]<|user|> {QUERY}<|assistant|>"
    assert r["response"].endswith("<eos>") and r["tokens"] > r["prompt_tokens"] == 40


def test_render_refuses_a_sample_index_past_the_file(charades, capsys):
    with pytest.raises(SystemExit, match=r"--index 3: .* holds 1 samples"):
        main(["data", "render", "--config", "tiny", "--data", str(charades), "--index", "3"])


# ------------------------------------------------------------------ chat templates
@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([QUERY, "what happens next? It happens in", "You are a helpful AI assistant."], 400)


@pytest.mark.parametrize("config", ["paper-d2vlm", "paper-llava-st", "paper-damo"])
def test_a_tokenizer_carrying_the_template_gives_the_same_prompt(tok, config):
    chat = chat_of(config)
    plain = DamoProcessor(tok, ProcessorConfig(layout="video_first", video_tokens=2, chat=chat))
    own = tok.__class__.from_pretrained(None, tokenizer_object=tok.backend_tokenizer, **tok.special_tokens_map)
    own.chat_template = chat["template"]
    with_template = DamoProcessor(own, ProcessorConfig(layout="video_first", video_tokens=2, chat=chat))
    times = [0.0, 1.0, 2.0]
    assert with_template.prompt_pieces(QUERY, times) == plain.prompt_pieces(QUERY, times)
    text = "".join(plain.prompt_pieces(QUERY, times)[0])
    assert text.count("<video>") == 5 and QUERY in text


def test_chat_prompt_ids_put_the_video_where_the_template_has_it_and_learn_the_stop(tok):
    p = DamoProcessor(tok, ProcessorConfig(layout="video_first", video_tokens=2, chat=chat_of("paper-d2vlm")))
    pieces, ids = p.prompt_pieces(QUERY, [0.0, 1.0, 2.0])
    assert ids[0] == tok.bos_token_id                                  # Phi-3's tokenizer puts <s> in front
    assert "".join(pieces) == PHI3_PROMPT.format(video="<video>" * 5)
    assert ids[1:] == tok("".join(pieces), add_special_tokens=False)["input_ids"]
    turns = [{"task": "grounding", "query": QUERY, "answer": "", "spans": [[0.0, 1.0]], "captions": []},
             {"task": "grounding", "query": "what happens next?", "answer": "", "spans": [[1.0, 2.0]], "captions": []}]
    enc = p.encode_turns(turns, np.array([0.0, 1.0, 2.0]), 3.0, p.layout(3))
    learned = tok.decode([i for i, y in zip(enc.ids, enc.labels) if y != -100])
    asked = [i for i, y in zip(enc.ids[len(ids):], enc.labels[len(ids):]) if y == -100]
    assert learned.count("<|end|>") == 2                                # each answer ends with the stop string
    # between the answers: the template's next user turn, less the <|end|> the first answer learned
    assert asked == tok("\n<|user|>\nwhat happens next?<|end|>\n<|assistant|>\n", add_special_tokens=False)["input_ids"]
    assert len(enc.evi_pos) == 4


def test_generation_stops_at_the_stop_string(tok):
    stops = stop_ids(tok, chat_of("paper-d2vlm")["stop"])
    end = tok("<|end|>", add_special_tokens=False)["input_ids"]
    words = tok("It happens", add_special_tokens=False)["input_ids"]
    assert stop_length(words, stops) == 0 and stop_length(words + end, stops) == len(end)
    assert stop_length(words + [tok.eos_token_id], stops) == 1
    assert stop_length(words + end, stop_ids(tok)) == 0   # plain prompts stop at eos only


def test_a_chat_config_without_a_stop_string_is_refused(tok):
    with pytest.raises(ValueError, match="model.chat.stop must name at least one stop string"):
        ProcessorConfig(chat={"template": "{{ messages }}", "stop": []})


# ------------------------------------------------------------------ frame times
def test_start_frame_times_cover_round_s_to_round_e_inclusive():
    assert frame_targets([[3.0, 5.0]], 10, 1.0, "start").nonzero()[0].tolist() == [3, 4, 5]
    assert frame_targets([[3.0, 5.0]], 10, 1.0, "centre").nonzero()[0].tolist() == [3, 4]
    assert frame_targets([[2.6, 4.4]], 10, 1.0, "start").nonzero()[0].tolist() == [3, 4]
    assert frame_targets([[1.5, 2.0]], 10, 2.0, "start").nonzero()[0].tolist() == [3, 4]


def test_a_run_of_frames_ends_at_the_last_frame_or_window(tok):
    start = DamoProcessor(tok, ProcessorConfig(frame_times="start"))
    centre = DamoProcessor(tok, ProcessorConfig())
    assert start.run_span(3, 5, 1, 10.0) == [3.0, 5.0]                  # official "3 - 5"
    assert centre.run_span(3, 5, 1, 10.0) == [3.0, 6.0]
    assert start.run_span(1, 2, 2, 10.0) == [2.0, 5.0] and centre.run_span(1, 2, 2, 10.0) == [2.0, 6.0]


def test_the_decoder_samples_window_starts_with_phase_zero(shared_data):
    path = shared_data / "videos" / "charades_0F7LW.mp4"
    a, b = decode_clip(path, fps=1.0, size=8, phase=0.0), decode_clip(path, fps=1.0, size=8)
    n = np.arange(a.num_frames)
    assert a.num_frames == b.num_frames
    # this file has 6.1 frames per second: each pick is within half a frame interval of its target
    assert np.abs(a.times - n).max() < 0.082 and np.abs(b.times - (n + 0.5)).max() < 0.082
    assert np.array_equal(a.times, decode_clip(path, fps=1.0, size=8, phase=0.0, mode="sequential").times)


def test_rendered_clips_follow_the_phase_too():
    assert render_clip("synth://standard/3/train/0", fps=1.0, size=32, phase=0.0).times[:3].tolist() == [0.0, 1.0, 2.0]


def test_a_question_cannot_inject_placeholders_through_the_chat_template(tok):
    p = DamoProcessor(tok, ProcessorConfig(layout="video_first", video_tokens=2, chat=chat_of("paper-d2vlm")))
    pieces, ids = p.prompt_pieces("when <video><eos> does it start?", [0.0, 1.0, 2.0])
    assert ids.count(p.video_id) == 5 and tok.eos_token_id not in ids
    assert "when <video><eos> does it start?" in "".join(pieces)


# ------------------------------------------------------------------ attention over the video
def test_bidirectional_video_attention_opens_only_the_placeholders_to_later_ones():
    V = 9
    ids = torch.tensor([[1, 5, V, V, 6, V, 7, 8, 0, 0],        # text, video, timestamp text, video, text, padding
                        [0, 0, 1, 5, V, V, V, 6, 7, 8]])       # left padding
    attn = (ids != 0).long()
    m = VIDEO_ATTENTION["bidirectional"](ids, attn, V)[:, 0]    # (B, L, L)
    L = ids.shape[1]
    later = torch.ones(L, L, dtype=torch.bool).triu(1)
    vid = ids == V
    for b in range(2):
        assert m[b][vid[b]][:, vid[b]].all()                     # every placeholder sees every other one
        first, last = vid[b].nonzero().flatten()[[0, -1]].tolist()
        assert m[b][first, last] and last > first                  # a video token sees a later video token
        assert not (m[b] & later)[~vid[b] & attn[b].bool()].any()  # no text token sees a later token
        assert not (m[b] & later & ~vid[b][None, :])[vid[b]].any()  # nor a placeholder a later text token
    causal = VIDEO_ATTENTION["causal"](ids, attn, V)
    assert causal is attn


def test_bidirectional_video_attention_changes_frame_states_and_nothing_before_the_video():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    cfg.layout = "query_first"
    model = DamoModel(cfg, train_tokenizer([QUERY, "It happens in"], 300)).eval()
    batch = processor_of(model).generation_batch([clip(4, 0)], [QUERY])

    def logits(attention: str) -> torch.Tensor:
        frame_emb, fusion_emb, _ = model.video_embeddings(batch)
        emb = model.scatter_video(batch.input_ids, frame_emb, fusion_emb, batch.num_frames)
        mask = VIDEO_ATTENTION[attention](batch.input_ids, batch.attention_mask, model.video_id)
        return model.llm(inputs_embeds=emb, attention_mask=mask).logits[0]

    with torch.no_grad():
        a, b = logits("causal"), logits("bidirectional")
    first = int((batch.input_ids[0] == model.video_id).nonzero()[0])
    assert torch.allclose(a[:first], b[:first], atol=1e-6)          # the question before the video: unchanged
    assert not torch.allclose(a[first], b[first], atol=1e-4)        # the first placeholder now sees the rest
    assert yaml.safe_load(find("configs", "paper-d2vlm.yaml").read_text())["video_attention"] == "bidirectional"


# ------------------------------------------------------------------ generation settings
def test_next_tokens_greedy_penalised_and_sampled():
    from damo.model.generation import Generation, next_tokens

    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0], [0.0, 3.0, 2.9, -1.0]])
    greedy, penal = Generation(), Generation(repetition_penalty=1.2)
    assert next_tokens(logits, [[], []], [greedy, greedy]).tolist() == [1, 1]
    # token 1 was said already: 3.0 / 1.2 = 2.5 < 2.9
    assert next_tokens(logits, [[1], [1]], [greedy, penal]).tolist() == [1, 2]
    hot = Generation(do_sample=True, temperature=5.0)
    draws = [next_tokens(logits, [[], []], [hot, hot], torch.Generator().manual_seed(s)).tolist() for s in range(20)]
    assert len({d[0] for d in draws}) > 1                                     # sampling varies with the seed
    assert draws == [next_tokens(logits, [[], []], [hot, hot], torch.Generator().manual_seed(s)).tolist()
                     for s in range(20)]                                       # and repeats with it
    narrow = Generation(do_sample=True, temperature=5.0, top_p=0.3)          # only the top token is left
    assert {next_tokens(logits, [[]], [narrow], torch.Generator().manual_seed(s)).item() for s in range(20)} == {1}


def test_generation_settings_per_task_are_saved_with_the_model(tmp_path):
    from damo.model.generation import generation_of

    d2 = yaml.safe_load(find("configs", "paper-d2vlm.yaml").read_text())["generation"]
    g = generation_of(d2)
    assert (g.do_sample, g.temperature, g.repetition_penalty) == (True, 0.2, 1.0)
    assert g.for_task("rvq").repetition_penalty == 1.2 and g.for_task("tvg").repetition_penalty == 1.0
    cfg = tiny_cfg()
    cfg.generation = d2
    model = DamoModel(cfg, train_tokenizer([QUERY], 300))
    model.save(tmp_path / "m")
    back = DamoModel.load(tmp_path / "m")
    assert back.generation == g and back.cfg.generation == d2
    with pytest.raises(ValueError, match=r"model.generation takes .* got \['temprature'\]"):
        generation_of({"tasks": {"rar": {"temprature": 0.2}}})


def test_paper_llava_st_renders_100_uniform_frames_fast_before_slow_and_braced_spans(charades, capsys):
    r = render(capsys, "--config", "paper-llava-st", "--data", str(charades))
    t = np.array(r["frame_times"])
    assert len(t) == 100 and t[0] == 0 and 9.99 < t[-1] < 10 and np.allclose(np.diff(t), t[1])
    # 64 bridge tokens, the fast stream (100 frames x 3 x 3), then the slow one (20 steps x 9 x 9)
    assert "<|im_start|>user\n[<video> x2584]\n" + QUERY in r["prompt"]
    assert r["video"] == [{"part": "bridge", "tokens": 64}, {"part": "frames", "tokens": 900},
                          {"part": "slow", "tokens": 1620}]
    assert r["response"] == "It happens in {<t_30><t_50>}.<|im_end|>"
    assert [c["token"] for c in r["coordinates"]] == ["<t_30>", "<t_50>"]


def test_fast_first_puts_the_frame_placeholders_before_the_slow_stream():
    cfg = yaml.safe_load(find("configs", "paper-llava-st.yaml").read_text())
    tok = train_tokenizer([QUERY], 300)
    procs = {o: DamoProcessor.from_model_config(DamoConfig.from_dict(cfg | {"stream_order": o}), tok)
             for o in ("slow_first", "fast_first")}
    for order, p in procs.items():
        lay = p.layout(100)
        ids = p.prompt(QUERY, [i / 10 for i in range(100)], lay)
        video = [i for i, x in enumerate(ids) if x == p.video_id]
        frames = p.frame_placeholders(ids, 100, lay)
        assert len(frames) == 900 and len(video) == 64 + 900 + 1620
        start = 64 if order == "fast_first" else 64 + 1620
        assert frames == video[start:start + 900]


def test_braced_spans_read_back_from_text():
    from damo.model.processing import span_text, text_spans

    assert span_text([3.0, 5.0], 10.0, 100, "braces") == "{<t_30><t_50>}"
    assert span_text([3.0, 5.0], style="braces") == "{3.0, 5.0}"
    assert text_spans("It happens in { 3.0 5.0 } and in 6.0 - 7.5 seconds.", 10.0) == [[3.0, 5.0, 1.0], [6.0, 7.5, 1.0]]


def test_argmax_decoding_reads_the_chosen_anchor_and_sampling_repeats_with_its_seed(monkeypatch):
    import damo.model.modeling_damo as md

    torch.manual_seed(0)
    cfg = tiny_cfg()
    cfg.time_encoding, cfg.time_bins, cfg.response = "lape", 11, "coupled"
    model = DamoModel(cfg, train_tokenizer([QUERY, "It happens in"], 300)).eval()
    batch = processor_of(model).generation_batch([clip(4, 0)], [QUERY])
    t3, eos = model.coord_axes["t"][3], model.tokenizer.eos_token_id
    forced = iter([t3, eos])
    monkeypatch.setattr(md, "next_tokens", lambda logits, seen, settings, rng: torch.tensor([next(forced)]))
    model.cfg.coordinate_decode = "argmax"
    row = model.generate(batch, max_new_tokens=4)[0]
    assert row["ids"] == [t3] and row["coords"] == [("t", pytest.approx(0.3 * float(batch.duration[0])))]
    monkeypatch.undo()
    model.cfg.generation = {"do_sample": True, "temperature": 2.0}
    model.generation = generation_of(model.cfg.generation)
    runs = [model.generate(batch, max_new_tokens=6, seed=s)[0]["ids"] for s in (0, 0, 1, 2, 3)]
    assert runs[0] == runs[1] and len({tuple(r) for r in runs}) > 1


def test_render_reads_a_real_videos_own_frame_times(tmp_path, capsys, shared_data, monkeypatch):
    monkeypatch.setenv("DAMO_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "charades.jsonl"
    path.write_text(json.dumps({"id": "0F7LW_0", "video": "charades_0F7LW", "duration": 30.65, "task": "grounding",
                                "query": QUERY, "answer": "", "spans": [[3.0, 5.0]]}) + "\n")
    r = render(capsys, "--config", "paper-d2vlm", "--data", str(path), "--video-root", str(shared_data / "videos"))
    t = np.array(r["frame_times"])
    # frames at i s, each the picture nearest (6.1 pictures per second in this file)
    assert len(t) == 31 and np.abs(t - np.arange(31)).max() < 0.082
    assert r["targets"][:7] == [0, 0, 0, 1, 1, 1, 0]


def test_lape_on_the_grid_before_the_packer_packs_in_the_llm_width():
    torch.manual_seed(0)
    cfg = DamoConfig.from_dict(TINY_MODEL | {
        "llm": TINY_MODEL["llm"] | {"hidden": 48}, "time_encoding": "lape", "time_bins": 8, "response": "coupled", "query_aware": False, "lape_at": "grid",
        "compressor": {"kind": "stp", "placement": "llm", "budget": 40, "k_min": 1, "k_max": 4,
                       "options": {"heads": 2, "fast_side": 1, "stride": 2}}})
    model = DamoModel(cfg, train_tokenizer([QUERY], 300)).eval()
    C = model.llm.config.hidden_size
    assert C != cfg.fuser.width and model.video.compressor.stream.shape == (2, C)
    cl = clip(4, 0)
    batch = processor_of(model).generation_batch([cl], [QUERY])
    later = processor_of(model).generation_batch([replace(cl, times=cl.times + 1.5)], [QUERY])
    with torch.no_grad():
        e, q, _ = model.video_embeddings(batch)
        e2, q2, _ = model.video_embeddings(later)
    assert e.shape[-1] == C and not torch.allclose(e, e2)      # the frames' times reach the packed tokens
    with pytest.raises(ValueError, match="lape_at grid .* needs time_encoding lape"):
        DamoConfig.from_dict({"lape_at": "grid"})


def test_render_reads_a_saved_models_own_processor(tmp_path, charades, capsys):
    cfg = tiny_cfg()
    cfg.frame_times = "start"
    DamoModel(cfg, train_tokenizer([QUERY, "It happens in"], 300)).save(tmp_path / "m")
    r = render(capsys, "--model", str(tmp_path / "m"), "--data", str(charades))
    assert r["frame_times"][:3] == [0.0, 1.0, 2.0] and r["targets"] == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert r["prompt"].startswith("<bos>") and r["response"].endswith("<eos>")
    with pytest.raises(SystemExit, match="needs one of --config .* or --model"):
        main(["data", "render", "--config", "tiny", "--model", str(tmp_path / "m"), "--data", str(charades)])
