"""Read ESM-2 checkpoints' tensors without running code of the file (`sciformer.esm2` maps
them onto a SciFormer).

- `_hf_weights`: the tensors of a Hugging Face `EsmForMaskedLM` directory
  (`model.safetensors`, else `pytorch_model.bin` loaded with ``weights_only=True``);
- `_fair_state_dict`: the state dict of a fair-esm `.pt`, either a plain state dict (loaded
  with ``weights_only=True``) or a hub file as distributed (`esm2_t6_8M_UR50D.pt` and its
  siblings), whose "args" / "cfg" entries hold pickled `argparse.Namespace` and omegaconf
  objects that ``weights_only=True`` refuses. These are read by `SafeUnpickler`, which runs no
  code of the file: every class the pickle names is looked up in a short allow-list (tensor
  rebuilding, `OrderedDict`, `defaultdict`, plain builtin types) or replaced by an inert
  `PickledObject` record (argparse / omegaconf / fairseq configuration objects, whose state is
  captured as plain data); any other global is refused with an error naming it. The hub
  file's layers, width and heads come back as plain values (`checkpoint_hparams`).
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any

import torch

from sciformer.errors import CheckpointError, first_line


def _torch_load(path: Path) -> Any:
    """torch.load with weights_only=True; anything that needs pickled code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load as a plain state dict ({first_line(exc, 160)})"
                              ) from None


# ---- Hugging Face directories --------------------------------------------------------------
def _hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of an HF directory (safetensors preferred), with the `esm.` prefix removed."""
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        path = folder / "model.safetensors"
        try:
            tensors = load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file "
                                  f"({first_line(exc, 160)})") from None
    elif (folder / "pytorch_model.bin").is_file():
        tensors = _torch_load(folder / "pytorch_model.bin")
    else:
        raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin")
    return {k.removeprefix("esm."): v for k, v in tensors.items()}


# ---- fair-esm hub files: a restricted unpickler ------------------------------------------
class PickledObject:
    """Inert record of a pickled object whose class is not imported: the class's dotted name,
    the constructor arguments and the state given to it. Nothing of the real class runs."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:
        obj = super().__new__(cls)
        obj.args, obj.state = args, {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls the class
        pass

    def __setstate__(self, state: Any) -> None:
        """BUILD: keep the state (a dict, or (dict, slot dict)) as plain data."""
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = state if isinstance(state, dict) else {"__state__": state}


_STAND_INS: dict[str, type] = {}


def _stand_in(qualname: str) -> type:
    """One PickledObject subclass per pickled class name."""
    if qualname not in _STAND_INS:
        _STAND_INS[qualname] = type(qualname.rsplit(".", 1)[-1], (PickledObject,),
                                    {"qualname": qualname})
    return _STAND_INS[qualname]


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_: Any
                    ) -> torch.Tensor:
    """What torch's `_rebuild_tensor_v2` does for a CPU tensor: a view on the storage."""
    t = torch.empty((0,), dtype=storage.dtype)
    return t.set_(storage._untyped_storage, offset, size, stride)


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor (pickle protocols 0/1), for stand-in classes only."""
    if not (isinstance(cls, type) and issubclass(cls, PickledObject)):
        raise pickle.UnpicklingError(f"refused: copyreg._reconstructor of {cls!r}")
    return cls.__new__(cls)


#: Globals that are safe to hand to the unpickler as themselves (or a safe equivalent).
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): lambda data, *_: data,
    ("collections", "OrderedDict"): OrderedDict,
    ("collections", "defaultdict"): defaultdict,  # omegaconf metadata caches
    ("copyreg", "_reconstructor"): _reconstructor,
    **{("builtins", t.__name__): t for t in (dict, list, tuple, set, frozenset, str, int,
                                             float, bool, bytes, object)},
}
#: Modules whose classes become inert PickledObject records: the configuration objects of
#: fairseq-trained checkpoints (argparse / omegaconf containers, fairseq config enums).
_STAND_IN_MODULES = ("argparse", "omegaconf", "typing", "fairseq")


class SafeUnpickler(pickle.Unpickler):
    """Unpickles the `data.pkl` of a torch zip archive without running any of its code.

    Storages come from the archive's `data/<key>` records (torch's persistent-id scheme);
    see the module docstring for the classes allowed.
    """

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: Path) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.source = archive, prefix, source
        self.storages: dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name.endswith("Storage"):
            try:
                return torch.storage._get_dtype_from_pickle_storage_type(name)
            except KeyError:
                pass
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.split(".")[0] in _STAND_IN_MODULES:
            return _stand_in(f"{module}.{name}")
        raise CheckpointError(f"{self.source}: refused to unpickle global '{module}.{name}' "
                              "(only tensors and plain configuration objects are read)")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], torch.dtype)):
            raise CheckpointError(f"{self.source}: unexpected persistent id {pid!r:.80}")
        _, dtype, key, _location, _numel = pid
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}/data/{key}")
            untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else \
                torch.UntypedStorage(0)
            self.storages[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype,
                                                            _internal=True)
        return self.storages[key]


def safe_load(path: Path) -> Any:
    """The object in a torch zip-format file, read by `SafeUnpickler` (nothing executed)."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a zip-format torch file (the legacy format is not "
                              "read without executing code)")
    with zipfile.ZipFile(path) as archive:
        pkls = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise CheckpointError(f"{path}: expected one <name>/data.pkl in the archive")
        prefix = pkls[0].split("/")[0]
        if f"{prefix}/byteorder" in archive.namelist() and \
                archive.read(f"{prefix}/byteorder").decode().strip() != "little":
            raise CheckpointError(f"{path}: big-endian tensors are not supported")
        try:
            return SafeUnpickler(archive.read(pkls[0]), archive, prefix, path).load()
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot unpickle ({type(exc).__name__}: "
                                  f"{str(exc)[:160]})") from None


def plain(obj: Any) -> Any:
    """Stand-ins and containers as plain data: a Namespace as its dict, an omegaconf
    container as its content, a value node as its value; tensors are left as they are."""
    if isinstance(obj, PickledObject):
        st = obj.state
        if "_content" in st:  # omegaconf DictConfig / ListConfig
            return plain(st["_content"])
        if "_val" in st:  # omegaconf value nodes
            return plain(st["_val"])
        if obj.qualname == "argparse.Namespace" or st:
            return {str(k): plain(v) for k, v in st.items()}
        return obj.qualname  # a bare type reference such as typing.Any
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


#: Hyper-parameter name in fair-esm configurations (ESM-2 cfg, ESM-1 args) -> our name.
_HPARAMS = {"encoder_layers": "layers", "layers": "layers", "encoder_embed_dim": "embed_dim",
            "embed_dim": "embed_dim", "encoder_attention_heads": "attention_heads",
            "attention_heads": "attention_heads", "token_dropout": "token_dropout"}


def checkpoint_hparams(raw: dict[str, Any]) -> dict[str, Any]:
    """layers / embed_dim / attention_heads / token_dropout from a hub file's "cfg"["model"]
    (ESM-2) or "args" (ESM-1) entry, where present."""
    cfg, args = plain(raw.get("cfg")), plain(raw.get("args"))
    sources = [cfg.get("model") if isinstance(cfg, dict) else None, args, cfg]
    out: dict[str, Any] = {}
    for src in sources:
        if isinstance(src, dict):
            for key, ours in _HPARAMS.items():
                if key in src and ours not in out and isinstance(src[key], (int, bool)):
                    out[ours] = src[key]
    return out


# ---- fair-esm state dicts -------------------------------------------------------------------
def _fair_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The module state dict of a fair-esm `.pt` (plain, or a hub file's "model" entry) and
    the hub file's configuration values (`checkpoint_hparams`; empty for a plain dict)."""
    try:
        raw = _torch_load(path)
    except CheckpointError:  # pickled configuration objects: read them without running code
        raw = safe_load(path)
    hparams = checkpoint_hparams(raw) if isinstance(raw, dict) else {}
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        raw = raw["model"]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    out = {}
    for key, value in raw.items():
        out[re.sub(r"^(encoder\.sentence_encoder\.|encoder\.)", "", key)] = value
    return out, hparams
