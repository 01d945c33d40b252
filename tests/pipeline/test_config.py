"""Config trees: defaults, then a TOML file, then dotted overrides; strict about keys and values."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from core.config import dumps_toml, load_config, parse_override, read_toml, save_resolved
from core.errors import ConfigError
from data_prep.config import PrepConfig


@dataclass
class Inner:
    size: int = 32
    mode: Literal["a", "b"] = "a"
    ratio: float = 0.5
    levels: list[int] = field(default_factory=lambda: [8, 5])
    name: str | None = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    flag: bool = False
    out_dir: str = "x"

    def validate(self):
        if self.inner.size > 1000:
            raise ConfigError("inner.size too large")


def test_defaults_file_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('flag = true\n[inner]\nsize = 64\nmode = "b"\n')
    cfg = load_config(Outer, path, ["inner.size=128", "inner.levels=[4, 4, 4]", "out_dir=/data/run 1", "inner.ratio=2"])
    assert cfg.flag is True and cfg.inner.mode == "b"
    assert cfg.inner.size == 128 and cfg.inner.levels == [4, 4, 4]
    assert cfg.out_dir == "/data/run 1"  # bare strings need no quotes
    assert cfg.inner.ratio == 2.0 and isinstance(cfg.inner.ratio, float)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("inner.sise=3", "unknown key 'inner.sise'"),
        ("bogus=1", "valid keys: flag, inner, out_dir"),
        ("inner.mode=c", "choose one of: a, b"),
        ("inner.size=big", "inner.size must be an integer"),
        ("flag=1", "flag must be true or false"),
        ("inner.levels=3", "inner.levels must be a list"),
        ("inner.size", "must look like section.key=value"),
        ("inner.size=2000", "inner.size too large"),
        ("flag.x=1", "flag must be true or false"),
    ],
)
def test_bad_values_name_the_field(override, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(Outer, None, [override])
    assert fragment in str(info.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_toml(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("x = [unclosed\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(Outer, None, ['out_dir=a "quoted" path', "inner.name=x"])
    path = save_resolved(cfg, tmp_path / "resolved.toml")
    again = load_config(Outer, path)
    assert again == cfg


def test_prep_config_round_trips_and_validates(tmp_path):
    cfg = load_config(PrepConfig, None, ["tokenizer.path=tok", "source.limit=10"])
    path = save_resolved(cfg, tmp_path / "prep.toml")
    assert load_config(PrepConfig, path) == cfg
    with pytest.raises(ConfigError, match="source.path is required"):
        load_config(PrepConfig, None, ["source.kind=imagefolder", "tokenizer.path=tok"])
    with pytest.raises(ConfigError, match="tokenizer.path is required"):
        load_config(PrepConfig, None, ["source.limit=10"])
    with pytest.raises(ConfigError, match="choose one of"):
        load_config(PrepConfig, None, ["source.kind=flickr"])


def test_parse_override_types():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=true") == ("a", True)
    assert parse_override('a="3"') == ("a", "3")
    assert parse_override("a=ray://host:10001") == ("a", "ray://host:10001")
    assert dumps_toml({"a": 1, "s": {"b": [1, 2], "c": None}}) == "a = 1\n\n[s]\nb = [1, 2]\n"


def test_every_shipped_config_loads():
    from pathlib import Path

    from pipeline.tokenizer_train import TokenizerTrainConfig

    root = Path(__file__).resolve().parents[2] / "configs"
    for path in sorted((root / "prep").glob("*.toml")):
        load_config(PrepConfig, path)
    for path in sorted((root / "tokenizer").glob("*.toml")):
        load_config(TokenizerTrainConfig, path)
