"""Tiny random stand-ins of Qwen2.5-VL, Qwen3-VL and the Qwen2.5-Omni thinker, built from their real
transformers classes and saved as model folders (config, safetensors, tokenizer), as a hub checkpoint is."""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import (PreTrainedTokenizerFast, Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration,
                          Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration,
                          Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig,
                          Qwen3VLForConditionalGeneration, WhisperFeatureExtractor)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>",
            "<|image_pad|>", "<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>"]
WORDS = ["system", "user", "assistant", "You are a helpful assistant.", "seconds", "The event happens in 3.0 - 7.5 "
         "seconds.", "<think>", "</think>", "<answer>", "</answer>", "When does the man open the door?",
         "0123456789", "Give the query: when does it happen", "from to and ."]


def tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE of a few hundred tokens with Qwen's special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(WORDS * 4, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIALS[1:])


def _ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    i = tok.convert_tokens_to_ids
    return {"video_token_id": i("<|video_pad|>"), "image_token_id": i("<|image_pad|>"),
            "vision_start_token_id": i("<|vision_start|>"), "vision_end_token_id": i("<|vision_end|>")}


TEXT = {"vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096}


def qwen2_5_vl(tok: PreTrainedTokenizerFast) -> Qwen2_5_VLForConditionalGeneration:
    ids = _ids(tok)
    cfg = Qwen2_5_VLConfig(
        text_config=TEXT | {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                "mrope_section": [2, 2, 4]},
                            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                       "window_size": 56, "fullatt_block_indexes": [1], "tokens_per_second": 2},
        **ids)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def qwen3_vl(tok: PreTrainedTokenizerFast) -> Qwen3VLForConditionalGeneration:
    ids = _ids(tok)
    cfg = Qwen3VLConfig(
        text_config=TEXT | {"head_dim": 16, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                                "mrope_section": [2, 3, 3], "mrope_interleaved": True},
                            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                       "num_position_embeddings": 64, "deepstack_visual_indexes": [0]},
        **ids)
    return Qwen3VLForConditionalGeneration(cfg).eval()


def qwen2_5_omni(tok: PreTrainedTokenizerFast) -> Qwen2_5OmniThinkerForConditionalGeneration:
    i = tok.convert_tokens_to_ids
    cfg = Qwen2_5OmniThinkerConfig(
        text_config=TEXT | {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                "mrope_section": [2, 2, 4]},
                            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                       "window_size": 56, "fullatt_block_indexes": [1]},
        audio_config={"num_mel_bins": 16, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32,
                      "d_model": 32, "output_dim": 32, "n_window": 50, "max_source_positions": 1500},
        video_token_index=i("<|video_pad|>"), image_token_index=i("<|image_pad|>"), audio_token_index=i("<|AUDIO|>"),
        vision_start_token_id=i("<|vision_start|>"), vision_end_token_id=i("<|vision_end|>"),
        audio_start_token_id=i("<|audio_bos|>"), audio_end_token_id=i("<|audio_eos|>"))
    return Qwen2_5OmniThinkerForConditionalGeneration(cfg).eval()


BUILDERS = {"qwen2.5-vl": qwen2_5_vl, "qwen3-vl": qwen3_vl, "qwen2.5-omni": qwen2_5_omni}


def save(name: str, folder: Path, seed: int = 0) -> Path:
    """The stand-in ``name`` (a key of BUILDERS) with random weights from ``seed``, saved to ``folder``."""
    torch.manual_seed(seed)
    tok = tokenizer()
    model = BUILDERS[name](tok)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    if name == "qwen2.5-omni":
        WhisperFeatureExtractor(feature_size=16).save_pretrained(folder)
    return folder


def save_whole_omni(folder: Path, seed: int = 0) -> Path:
    """The Qwen2.5-Omni stand-in saved as a whole Omni checkpoint (``qwen2_5_omni``: the thinker's weights
    under ``thinker.``), as the published Qwen2.5-Omni-7B is; the talker is left out (``enable_audio_output``
    false), its weights being no part of what DaMO runs."""
    torch.manual_seed(seed)
    tok = tokenizer()
    thinker = qwen2_5_omni(tok)
    whole = Qwen2_5OmniForConditionalGeneration(Qwen2_5OmniConfig(thinker_config=thinker.config.to_dict(),
                                                                  enable_audio_output=False))
    whole.thinker.load_state_dict(thinker.state_dict())
    whole.save_pretrained(folder)
    tok.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=16).save_pretrained(folder)
    return folder
