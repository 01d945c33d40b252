"""Tests for the text tokenizers: byte-level default, BPE training / loading, fingerprints."""

import hashlib
import json
from pathlib import Path

import pytest

from core.errors import ConfigError, DataError
from model.tokenizers import BPETokenizer, ByteTokenizer, TextTokenizer, load_text_tokenizer, train_bpe

SAMPLES = [
    "hello world",
    "Grüße aus Köln — ½ € and naïve café",
    "日本語のテキスト 和 中文",
    "emoji 🙂🚀 and tabs\tand\nnewlines  double  spaces ",
    "",
]
CORPUS = [
    "the quick brown fox jumps over the lazy dog. " * 3,
    "a red square and a blue circle on a black background",
    "Grüße aus Köln, naïve café, 日本語のテキスト 🙂",
    "tokenizers split text into pieces; pieces become ids.",
] * 25


def test_byte_tokenizer_round_trips_any_text() -> None:
    tok = ByteTokenizer()
    assert isinstance(tok, TextTokenizer)
    for s in SAMPLES:
        ids = tok.encode(s)
        assert ids == list(s.encode("utf-8"))
        assert all(0 <= i < 256 for i in ids)
        assert tok.decode(ids) == s


def test_byte_tokenizer_specials() -> None:
    tok = ByteTokenizer()
    specials = {tok.pad_id, tok.bos_id, tok.eos_id}
    assert len(specials) == 3 and min(specials) >= 256 and max(specials) < tok.vocab_size == 259
    assert tok.decode([tok.bos_id, *tok.encode("ok é"), tok.eos_id, tok.pad_id]) == "ok é"
    assert tok.decode(tok.encode("é")[:1]) == "\ufffd"  # cut multi-byte char: replaced, not an exception
    assert tok.fingerprint == ByteTokenizer().fingerprint and len(tok.fingerprint) == 64
    assert tok.name == "byte"


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> tuple[BPETokenizer, Path]:
    out = tmp_path_factory.mktemp("bpe")
    return train_bpe(CORPUS, vocab_size=320, out_path=out), out


def test_bpe_round_trip_and_compression(bpe) -> None:
    tok, out = bpe
    assert isinstance(tok, TextTokenizer)
    assert (out / "tokenizer.json").is_file()
    assert 259 < tok.vocab_size <= 320
    for s in SAMPLES + CORPUS[:4]:
        assert tok.decode(tok.encode(s)) == s
    text = CORPUS[0]
    assert len(tok.encode(text)) < 0.6 * len(text.encode("utf-8"))  # merges learned from the corpus
    assert all(0 <= i < tok.vocab_size for i in tok.encode(SAMPLES[3]))


def test_bpe_specials_are_distinct_and_skipped_on_decode(bpe) -> None:
    tok, _ = bpe
    assert len({tok.pad_id, tok.bos_id, tok.eos_id}) == 3
    assert tok.decode([tok.bos_id, *tok.encode("hello"), tok.eos_id, tok.pad_id]) == "hello"


def test_bpe_load_and_fingerprint_stability(bpe, tmp_path: Path) -> None:
    tok, out = bpe
    from_dir = load_text_tokenizer(out)
    from_file = load_text_tokenizer(str(out / "tokenizer.json"))
    assert from_dir.fingerprint == from_file.fingerprint == tok.fingerprint
    assert from_file.encode(CORPUS[1]) == tok.encode(CORPUS[1])
    # fingerprint = sha256 of the canonical tokenizer.json: formatting does not matter, content does
    content = json.loads((out / "tokenizer.json").read_text())
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert tok.fingerprint == hashlib.sha256(canonical).hexdigest()
    (tmp_path / "pretty.json").write_text(json.dumps(content, indent=4))
    assert load_text_tokenizer(tmp_path / "pretty.json").fingerprint == tok.fingerprint
    # retraining on the same data is deterministic
    assert train_bpe(CORPUS, 320, tmp_path / "again").fingerprint == tok.fingerprint
    assert train_bpe(CORPUS, 300, tmp_path / "smaller").fingerprint != tok.fingerprint
    assert tok.fingerprint != ByteTokenizer().fingerprint


def test_load_text_tokenizer_specs_and_errors(tmp_path: Path) -> None:
    assert isinstance(load_text_tokenizer("byte"), ByteTokenizer)
    with pytest.raises(DataError, match=r"no text tokenizer at .*tokenizer\.json.*train_bpe"):
        load_text_tokenizer(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid tokenizer.json"):
        load_text_tokenizer(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="vocab_size"):
        train_bpe(CORPUS, 100, tmp_path / "tiny")
