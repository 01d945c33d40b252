"""Text tokenizers with one interface: a byte-level default that needs no files, and byte-level
BPE trained / loaded with the HF `tokenizers` library.

Interface (`TextTokenizer`): encode(text) -> list[int] (no specials added), decode(ids) -> str
(specials skipped), vocab_size, bos_id, eos_id, pad_id, fingerprint (sha256 hex identifying the
vocabulary; token shards record it), name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from core.errors import ConfigError, DataError

SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>")
# Accepted alternatives when loading a foreign tokenizer.json (GPT-2, Llama, ...).
_ROLE_CANDIDATES = {
    "pad": ("<|pad|>", "<pad>", "[PAD]", "<|endoftext|>"),
    "bos": ("<|bos|>", "<s>", "[CLS]", "<|begin_of_text|>", "<|endoftext|>"),
    "eos": ("<|eos|>", "</s>", "[SEP]", "<|end_of_text|>", "<|endoftext|>"),
}


@runtime_checkable
class TextTokenizer(Protocol):
    name: str

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...
    @property
    def pad_id(self) -> int: ...
    @property
    def fingerprint(self) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, then pad=256, bos=257, eos=258. Any text round-trips exactly."""

    name = "byte"

    @property
    def vocab_size(self) -> int:
        return 256 + len(SPECIAL_TOKENS)

    @property
    def pad_id(self) -> int:
        return 256

    @property
    def bos_id(self) -> int:
        return 257

    @property
    def eos_id(self) -> int:
        return 258

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"nodd-byte-tokenizer-v1:{','.join(SPECIAL_TOKENS)}".encode()).hexdigest()

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        # Specials carry no text; invalid byte sequences (e.g. a cut-off multi-byte char) become U+FFFD.
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class BPETokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` loaded from a local tokenizer.json."""

    def __init__(self, tokenizer: Tokenizer, name: str = "bpe") -> None:
        self._tok = tokenizer
        self.name = name
        ids = {role: self._find_special(role) for role in _ROLE_CANDIDATES}
        self._pad, self._bos, self._eos = ids["pad"], ids["bos"], ids["eos"]
        self._fingerprint = hashlib.sha256(_canonical(tokenizer.to_str())).hexdigest()

    def _find_special(self, role: str) -> int:
        for tok in _ROLE_CANDIDATES[role]:
            i = self._tok.token_to_id(tok)
            if i is not None:
                return i
        raise DataError(
            f"tokenizer {self.name} has no {role} token (looked for {list(_ROLE_CANDIDATES[role])}); "
            f"retrain it with train_bpe, which adds {list(SPECIAL_TOKENS)}"
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "BPETokenizer":
        p = Path(path)
        try:
            tok = Tokenizer.from_file(str(p))
        except Exception as e:  # tokenizers raises plain Exception subclasses for bad JSON
            raise DataError(f"{p} is not a valid tokenizer.json ({e}); retrain it with train_bpe") from e
        return cls(tok, name=f"bpe:{p}")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def save(self, path: str | os.PathLike) -> None:
        self._tok.save(str(path))


def _canonical(tokenizer_json: str) -> bytes:
    # Key order and whitespace do not change the vocabulary, so they must not change the fingerprint.
    return json.dumps(json.loads(tokenizer_json), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def tokenizer_json_path(path: str | os.PathLike) -> Path:
    """A directory means <dir>/tokenizer.json; anything else is the file itself."""
    p = Path(path)
    return p / "tokenizer.json" if p.is_dir() or p.suffix != ".json" else p


def train_bpe(texts: Iterable[str], vocab_size: int, out_path: str | os.PathLike) -> BPETokenizer:
    """Train byte-level BPE on `texts`, write tokenizer.json to out_path (a .json file or a
    directory), and return it loaded from that file. vocab_size counts the 256 byte symbols
    and the 3 specials, so it must be >= 259 + 1."""
    min_vocab = 256 + len(SPECIAL_TOKENS) + 1
    if not isinstance(vocab_size, int) or vocab_size < min_vocab:
        raise ConfigError(
            f"train_bpe vocab_size = {vocab_size!r} must be an int >= {min_vocab} "
            "(256 bytes + 3 specials + at least one merge)"
        )
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False keeps encode/decode an exact round trip of the input text.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out = tokenizer_json_path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return BPETokenizer.from_file(out)


def load_text_tokenizer(spec: str | os.PathLike) -> ByteTokenizer | BPETokenizer:
    """"byte" -> ByteTokenizer; otherwise a tokenizer.json path, or a directory holding one."""
    if str(spec) == "byte":
        return ByteTokenizer()
    p = tokenizer_json_path(spec)
    if not p.is_file():
        raise DataError(
            f"no text tokenizer at {p}: give 'byte', a tokenizer.json, or a directory holding one; "
            "train one with model.tokenizers.train_bpe(texts, vocab_size, out_path)"
        )
    return BPETokenizer.from_file(p)
