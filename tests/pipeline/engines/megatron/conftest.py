"""megatron-core needs a process group and its parallel state even in one process: a fixture
gives each test a one-rank gloo group (a file store: no port) and tears both down after."""

import pytest

pytest.importorskip("megatron.core", reason="the megatron extra is not installed: pip install 'nodd[megatron]'")


@pytest.fixture
def megatron_one_process(tmp_path):
    import torch.distributed as dist
    from megatron.core import parallel_state

    from pipeline.engines.megatron.cpu_compat import enable_if_no_gpu

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    enable_if_no_gpu()
    yield
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()
