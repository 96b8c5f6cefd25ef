"""Reading checkpoints without running code: a shared summarizer is untrusted input.

`torch.load`'s full unpickler calls whatever a file names, so a crafted `.ckpt` can run a command
before wsisum says a word. Every torch file the project reads (a `sampler.ckpt_path`, a resumed
`ckpt_path`, evaluation's best fold model, CLAM `.pt` bags) goes through `safe_torch_load`: tensors
and plain Python values only (`weights_only=True`). Modules are rebuilt from the checkpoint's
hyper-parameters (`restore_module`), never unpickled.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from wsisum.errors import InputError

if TYPE_CHECKING:
    import lightning as L

# Types beyond tensors and builtins that `weights_only` must accept for the project's own
# checkpoints. None: wsisum-train and wsisum-evaluate checkpoints (heads and pca fusion, visible
# sizes, class weights, EarlyStopping/ModelCheckpoint states) hold only tensors, dicts, lists,
# tuples, str, int, float, bool and None (tests/test_untrusted_checkpoints.py loads real ones).
SAFE_TYPES: tuple[type, ...] = ()
if SAFE_TYPES:  # registered once per process (torch>=2.4; the scoped `safe_globals` needs 2.5)
    torch.serialization.add_safe_globals(list(SAFE_TYPES))
REFUSED = "not a wsisum checkpoint, or contains code objects: refused"

ModuleT = TypeVar("ModuleT", bound="L.LightningModule")


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """`torch.load` restricted to tensors and plain values (+ `SAFE_TYPES`); raises what torch raises."""
    with warnings.catch_warnings():
        # Lightning saves with pickle protocol 4, which the safe unpickler reads but warns about
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint dict at `path`, read with `weights_only=True`; one `InputError` line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        ckpt = safe_torch_load(path, map_location)
    except pickle.UnpicklingError:  # a global outside the allow-list: code, or not ours
        raise InputError(path, REFUSED) from None
    except Exception as err:  # zip/pickle errors of a truncated or foreign file
        raise InputError(path, f"unreadable checkpoint (truncated or corrupt?): {type(err).__name__}") from None
    if not isinstance(ckpt, dict):
        raise InputError(path, REFUSED)
    return ckpt


def hyper_parameters(path: str | Path) -> dict[str, Any]:
    """The `hyper_parameters` a Lightning checkpoint was built with (read as safely as the weights)."""
    hp = load_checkpoint(path).get("hyper_parameters")
    if not isinstance(hp, dict):
        raise InputError(path, "not a wsisum checkpoint (no hyper-parameters)")
    return hp


def restore_module(cls: type[ModuleT], path: str | Path, map_location: Any = "cpu") -> ModuleT:
    """`cls(**hyper_parameters)` with the checkpoint's weights: Lightning's `load_from_checkpoint`
    without its own unpickling, so nothing but `load_checkpoint` ever reads a file."""
    ckpt = load_checkpoint(path, map_location)
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise InputError(path, f"not a {cls.__name__} checkpoint (no hyper-parameters or weights)")
    try:
        module = cls(**hp)
        module.on_load_checkpoint(ckpt)
        module.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise InputError(path, f"not a {cls.__name__} checkpoint ({type(err).__name__}: {err})") from None
    device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
    return module.to(device)
