"""Lightning's own checkpoint reads (`trainer.fit(ckpt_path=...)`, `trainer.test(ckpt_path=...)`)
through `wsisum.checkpoints`, so a resumed or tested checkpoint is never unpickled either."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from wsisum.checkpoints import load_checkpoint


class SafeCheckpointIO(TorchCheckpointIO):
    """Saves as Lightning does; loads with `load_checkpoint` (weights only, one-line refusal)."""

    def load_checkpoint(
        self, path: Any, map_location: Callable | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path, "cpu" if map_location is None else map_location)
