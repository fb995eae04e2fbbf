"""Causal-LM data: a by-document validation split, packing into fixed blocks, and the unigram baseline.

The validation split is decided per document *before* packing, by a stable hash of the document's
text, so no text is in both parts (a curriculum mix repeats documents; every copy of a text lands on
the same side). Each part is tokenized, an eos token is appended to every document, the stream is
concatenated and cut into ``block_size`` blocks; the tail shorter than a block is dropped.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch.utils.data import Dataset


def is_validation_text(text: str, val_fraction: float, seed: int = 0) -> bool:
    """Whether ``text`` belongs to the validation part (stable hash of seed and text)."""
    digest = hashlib.sha1(f"{seed}\0{text}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def split_documents(texts: Iterable[str], val_fraction: float = 0.1,
                    seed: int = 0) -> tuple[list[str], list[str]]:
    """(train_texts, val_texts) by document; equal texts always go to the same part."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must lie in [0, 1)")
    train, val = [], []
    for text in texts:
        (val if is_validation_text(text, val_fraction, seed) else train).append(text)
    return train, val


def token_stream(documents: Iterable[Sequence[int]], eos_id: int) -> list[int]:
    """The documents' token ids concatenated, each document followed by ``eos_id``."""
    stream: list[int] = []
    for ids in documents:
        stream.extend(ids)
        stream.append(eos_id)
    return stream


def blocks_from_stream(stream: Sequence[int], block_size: int) -> torch.Tensor:
    """Cut a token stream into a (n_blocks, block_size) LongTensor, dropping the short tail."""
    if block_size < 2:
        raise ValueError(f"block_size={block_size} must be >= 2")
    n_blocks = len(stream) // block_size
    return torch.tensor(stream[:n_blocks * block_size], dtype=torch.long).view(n_blocks, block_size)


def pack_token_ids(documents: Iterable[Sequence[int]], block_size: int, eos_id: int) -> torch.Tensor:
    """Concatenate documents, each followed by ``eos_id``, into a (n_blocks, block_size) LongTensor."""
    return blocks_from_stream(token_stream(documents, eos_id), block_size)


class PackedLMDataset(Dataset):
    """Fixed-length blocks for causal LM training; labels equal inputs (the model shifts them)."""

    def __init__(self, blocks: torch.Tensor):
        if blocks.dim() != 2:
            raise ValueError(f"blocks must be 2-D (n_blocks, block_size), got shape {tuple(blocks.shape)}")
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        block = self.blocks[index]
        return {"input_ids": block, "labels": block}


@dataclass
class LMData:
    """Train and validation blocks plus the numbers a run report needs."""

    train: PackedLMDataset  # training blocks
    val: PackedLMDataset  # validation blocks (documents disjoint from training)
    train_token_ids: list[int]  # the train token stream (eos included) before cutting into blocks
    val_token_ids: list[int]  # the validation token stream, likewise
    train_documents: int  # documents in the training part
    val_documents: int  # documents in the validation part


def _tokenize(tokenizer, texts: list[str]) -> list[int]:
    documents = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return token_stream(documents, tokenizer.eos_token_id)


def build_lm_data(texts: Sequence[str], tokenizer, block_size: int, val_fraction: float = 0.1,
                  seed: int = 0) -> LMData:
    """Split ``texts`` by document, tokenize each part and pack it into ``block_size`` blocks."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; documents are separated by eos when packed")
    train_texts, val_texts = split_documents(texts, val_fraction, seed)
    if not train_texts:
        raise ValueError(f"no training documents out of {len(texts)} (val_fraction={val_fraction})")
    train_stream, val_stream = _tokenize(tokenizer, train_texts), _tokenize(tokenizer, val_texts)
    train_blocks = blocks_from_stream(train_stream, block_size)
    if train_blocks.shape[0] == 0:
        raise ValueError(f"the training text ({len(train_stream)} tokens) is shorter than one block of "
                         f"{block_size}: give more text or a smaller block_size")
    return LMData(train=PackedLMDataset(train_blocks), val=PackedLMDataset(blocks_from_stream(val_stream, block_size)),
                  train_token_ids=train_stream, val_token_ids=val_stream,
                  train_documents=len(train_texts), val_documents=len(val_texts))


def unigram_perplexity(train_ids: Iterable[int], heldout_ids: Iterable[int], vocab_size: int) -> float:
    """Perplexity of ``heldout_ids`` under a unigram model of ``train_ids`` with add-one smoothing:
    p(w) = (count(w) + 1) / (N + V). The floor every trained language model must beat."""
    counts = Counter(int(token) for token in train_ids)
    heldout = [int(token) for token in heldout_ids]
    if not heldout:
        raise ValueError("heldout_ids is empty; perplexity needs at least one held-out token")
    out_of_range = [token for token in list(counts) + heldout if not 0 <= token < vocab_size]
    if out_of_range:
        raise ValueError(f"token id {out_of_range[0]} is outside the vocabulary of {vocab_size}")
    denominator = sum(counts.values()) + vocab_size
    nll = -sum(math.log((counts[token] + 1) / denominator) for token in heldout) / len(heldout)
    return math.exp(nll)
