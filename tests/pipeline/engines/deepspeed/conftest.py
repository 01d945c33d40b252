import pytest

pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed: pip install 'nodd[deepspeed]'")
