"""train.init_from moves weights between engines and layouts through export/: a megatron engine
starts from a native run's export and a native engine from a megatron one's, bit for bit."""

import dataclasses

import pytest
import torch
from support.parity import train_config

from core.errors import DataError
from pipeline.distributed import DistInfo
from pipeline.engines.megatron.engine import MegatronEngine
from pipeline.engines.native.engine import NativeEngine
from pipeline.export import write_export

ONE = DistInfo(0, 1, torch.device("cpu"))


def export_of(engine, folder, cfg):
    meta = {"export_version": 2, "model": dataclasses.asdict(cfg.model), "text_tokenizer": "", "image_tokenizer": "",
            "latent_norm": None}
    write_export(folder, engine.export_state_dict(), meta)
    return folder


@pytest.mark.parametrize("mode", ["transfusion", "discrete"])
def test_weights_cross_between_engines_exactly(megatron_one_process, tmp_path, mode):
    source_cfg = train_config(mode, {})
    source_cfg.train.seed = 7  # other weights than the seed-0 runs below would draw
    native = NativeEngine(source_cfg, ONE)
    folder = export_of(native, tmp_path / "native", source_cfg)

    cfg = train_config(mode, {}, "megatron")
    cfg.train.init_from = str(folder)
    megatron = MegatronEngine(cfg, ONE)
    expected = native.export_state_dict()
    got = megatron.export_state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)

    back_cfg = train_config(mode, {})
    back_cfg.train.init_from = str(export_of(megatron, tmp_path / "megatron", cfg))
    back = NativeEngine(back_cfg, ONE).export_state_dict()
    assert all(torch.equal(back[k], expected[k]) for k in expected)


def test_weights_of_another_model_are_refused(megatron_one_process, tmp_path):
    source = train_config("transfusion", {})
    folder = export_of(NativeEngine(source, ONE), tmp_path / "native", source)
    cfg = train_config("transfusion", {}, "megatron", model_options={"width": 96})
    cfg.train.init_from = str(folder)
    with pytest.raises(DataError, match="do not fit this run's model config"):
        MegatronEngine(cfg, ONE)
