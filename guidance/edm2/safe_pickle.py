"""Read EDM2's network pickles WITHOUT executing anything they contain.

EDM2 saves its networks with `torch_utils.persistence`: each persistent object is pickled as a call of
`torch_utils.persistence._reconstruct_persistent_obj(meta)` whose `meta` holds the Python source of the object's
module (`module_src`), the class name and the object's state; edm2's own loader `exec`s that source. Loading such a
file with `pickle.load` or `torch.load(weights_only=False)` therefore runs whatever code the file carries.

This reader never does. Its unpickler (`find_class`) resolves only a fixed list of names:

- torch's tensor rebuilders (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`, `_rebuild_parameter_with_state`),
  and `torch.storage._load_from_bytes`, replaced by a reader that opens the storage's inner bytes with
  `torch.load(weights_only=True)` (torch's own restricted unpickler);
- `collections.OrderedDict`, `builtins.set` / `frozenset`, numpy's array / dtype / scalar reconstructors (the latent
  encoder's scale and bias);
- `dnnlib.util.EasyDict` -> a plain dict; `torch.nn.ModuleDict` / `ModuleList` / `Sequential` -> a `Record` that
  keeps the state it is given;
- `torch_utils.persistence._reconstruct_persistent_obj` -> a stub that returns a `Persistent` record (class name,
  state, the sha256 of the embedded source) and never compiles or executes `module_src`.

Any other name refuses the file in one line (nothing was executed). What comes back is plain data: dicts, tensors,
numpy arrays and records, from which guidance.edm2 takes the state dict and the constructor arguments.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
from dataclasses import dataclass, field
from typing import Any

import torch

from guidance.errors import GuidanceError


@dataclass
class Persistent:
    """What a persistent object of edm2 becomes: its class name and state; its module source is not run."""

    class_name: str
    state: dict = field(repr=False)
    version: Any = None
    source_sha256: str = ""
    source_chars: int = 0

    def __setstate__(self, state):  # a pickle never BUILDs a Persistent (the state comes in `meta`)
        raise pickle.UnpicklingError("unexpected state for a persistent object")


class Record:
    """A torch container module (ModuleDict, ...) pickled as a plain object: its name and the state it is given
    (the unpickler creates it with __new__ and hands it the state, as pickle does for any object)."""

    class_name = "?"

    def __setstate__(self, state):
        self.state = dict(state) if isinstance(state, dict) else {"state": state}

    def __repr__(self):
        return f"Record({self.class_name}, {sorted(getattr(self, 'state', {}))})"


class EasyDict(dict):
    """dnnlib.util.EasyDict read as a plain dict."""


def _record_class(name: str) -> type:
    return type(f"Record_{name}", (Record,), {"class_name": name})


def _reconstruct_persistent(meta) -> Persistent:
    """The stand-in of torch_utils.persistence._reconstruct_persistent_obj: records, never executes."""
    if not isinstance(meta, dict) or not isinstance(meta.get("class_name"), str):
        raise pickle.UnpicklingError("a persistent object without a class name")
    src = meta.get("module_src") or ""
    src = src if isinstance(src, str) else ""
    state = meta.get("state")
    return Persistent(meta["class_name"], dict(state) if isinstance(state, dict) else {}, meta.get("version"),
                      hashlib.sha256(src.encode()).hexdigest(), len(src))


def _storage_from_bytes(data: bytes):
    """torch.storage._load_from_bytes, with torch's weights-only unpickler (storages only)."""
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("a storage that is not bytes")
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _allowed() -> dict[tuple[str, str], Any]:
    import numpy as np

    names: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 pickles name numpy._core, numpy 1 numpy.core
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        names[(mod, "_reconstruct")] = core.multiarray._reconstruct
        names[(mod, "scalar")] = core.multiarray.scalar
    for cls in ("ModuleDict", "ModuleList", "Sequential"):
        names[("torch.nn.modules.container", cls)] = _record_class(cls)
    return names


class SafeUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the names of `_allowed()` (module docstring)."""

    def __init__(self, file):
        super().__init__(file)
        self.allowed = _allowed()

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which is neither a tensor nor a part of "
                                         "an EDM2 network pickle") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it holds persistent ids (a torch.save file, not an EDM2 pickle)")


def load_edm2_pickle(path) -> Any:
    """The plain data of an EDM2 pickle (nothing in it executed); GuidanceError (one line) for a file it refuses."""
    with open(path, "rb") as f:
        try:
            return SafeUnpickler(f).load()
        except Exception as e:  # anything the file's bytes provoke: refused at the boundary, in one line
            msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise GuidanceError(f"{path} is not a readable EDM2 pickle ({msg}); nothing in it was executed") from None
