"""The background prefetcher: the plain loader's batches, in order, with the state of what was consumed."""

import pickle
import threading

import pytest
import torch
from support.loader_helpers import data_cfg, model_cfg, same

from core.errors import ConfigError, DataError
from pipeline.data.loader import PackedLoader
from pipeline.data.prefetch import Prefetcher, prefetch_depth


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_same_batches_as_the_loader_and_the_state_of_what_was_consumed(shards, depth):
    cfg = data_cfg(shards["kl"])
    plain = PackedLoader(cfg, model_cfg())
    with Prefetcher(PackedLoader(cfg, model_cfg()), per_step=2, depth=depth) as ahead:
        initial = pickle.loads(pickle.dumps(ahead.state_dict()))
        for _ in range(3):
            step = ahead.next_step()
            assert len(step) == 2 and all(same(plain.next_batch(), b) for b in step)
        state = pickle.loads(pickle.dumps(ahead.state_dict()))  # what a checkpoint stores
        assert ahead.epoch == plain.reader.epoch and ahead.efficiency == plain.efficiency
    # the thread packed further ahead, but the state is the one after the 6 batches consumed
    resumed = PackedLoader(cfg, model_cfg())
    resumed.load_state_dict(state)
    assert all(same(plain.next_batch(), resumed.next_batch()) for _ in range(3))
    fresh = PackedLoader(cfg, model_cfg())
    fresh.load_state_dict(initial)
    assert same(fresh.next_batch(), PackedLoader(cfg, model_cfg()).next_batch())


def test_an_error_in_the_thread_reaches_the_step_that_needed_the_batch(shards):
    loader = PackedLoader(data_cfg(shards["kl"], seq_len=32), model_cfg())  # no document fits
    with Prefetcher(loader, per_step=1, depth=2) as ahead:
        with pytest.raises(DataError, match="does not fit"):
            ahead.next_step()


def test_close_ends_the_thread_even_with_a_full_queue(shards):
    ahead = Prefetcher(PackedLoader(data_cfg(shards["kl"]), model_cfg()), per_step=1, depth=1)
    ahead.next_step()
    ahead.close()
    assert not any(t.name == "nodd-prefetch" and t.is_alive() for t in threading.enumerate())


def test_auto_depth_packs_ahead_on_accelerators_only(shards):
    assert prefetch_depth(-1, torch.device("cpu")) == 0  # the step's threads already use every core
    assert prefetch_depth(-1, torch.device("cuda")) == 2
    assert prefetch_depth(3, torch.device("cpu")) == 3
    with pytest.raises(ConfigError, match="prefetch"):
        data_cfg(shards["kl"], prefetch=-2)
