"""NativeConfig: the `[native]` section, settings only the torch-native engine reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NativeConfig:
    """Fields:
        reshard_after_forward: FSDP2 frees each block's gathered parameters after its forward and
            gathers them again for backward (ZeRO-3). false keeps them until backward: one
            all-gather less per block and step, for the memory of the full block parameters.
    """

    reshard_after_forward: bool = True
