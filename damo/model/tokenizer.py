"""Tokenizer for the tiny default LLM: byte-level BPE trained with `tokenizers` on our text.

Byte-level BPE never meets an unknown character, so user queries about real videos still
tokenise. Special tokens stay single tokens. Real LLM backbones bring their own tokenizer;
the same special tokens are added to it (see :func:`add_special_tokens`).
"""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
VIDEO = "<video>"      # one placeholder per visual embedding (replaced by masked_scatter)
EVI, EVI_END = "<evi>", "</evi>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, VIDEO, EVI, EVI_END, USER, ASSISTANT]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 600) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   additional_special_tokens=[VIDEO, EVI, EVI_END, USER, ASSISTANT])


def add_special_tokens(tok: PreTrainedTokenizerFast) -> int:
    """Add our special tokens to a pretrained LLM's tokenizer; returns how many were new."""
    n = tok.add_special_tokens({"additional_special_tokens": [VIDEO, EVI, EVI_END, USER, ASSISTANT]})
    if tok.pad_token is None:
        n += tok.add_special_tokens({"pad_token": PAD})
    return n
