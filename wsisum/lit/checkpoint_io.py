"""Lightning's own checkpoint reads (`trainer.fit(ckpt_path=...)`, `trainer.test(ckpt_path=...)`)
through `wsisum.checkpoints`, so a resumed or tested checkpoint is never unpickled either; and its
saves through a temp file and a rename, so a save that fails (full disk, a kill) never replaces a
good `last.ckpt` with a truncated one (Lightning writes the file in place)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from wsisum.checkpoints import load_checkpoint
from wsisum.data.atomic import atomic_path


class SafeCheckpointIO(TorchCheckpointIO):
    """Saves as Lightning does, atomically; loads with `load_checkpoint` (weights only, one-line refusal)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)

    def load_checkpoint(
        self, path: Any, map_location: Callable | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path, "cpu" if map_location is None else map_location)
