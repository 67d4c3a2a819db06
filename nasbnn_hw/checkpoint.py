"""Loading checkpoints safely (never arbitrary unpickling) and the project's own supernet checkpoints,
including those saved by the official NAS-BNN code."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from .arch import Arch
from .errors import CheckpointError
from .space import SearchSpace, get_space

FORMAT = "nasbnn-hw/supernet-v1"
_OFFICIAL_EXTRA_KEYS = ("biggest_cand", "smallest_cand")


def safe_load(path: str | Path):
    """torch.load with weights_only=True; a file that needs arbitrary unpickling is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        import re
        m = re.search(r"Unsupported (global|class)[^\n]*?GLOBAL ([\w.]+)", str(e))
        if m is None:
            raise CheckpointError(f"cannot read checkpoint {str(path)!r}: not a torch.save file") from None
        what = m.group(2)
        raise CheckpointError(f"refusing to load {str(path)!r}: it needs arbitrary unpickling ({what}), which could "
                              f"run code; only tensors, numbers, strings, lists, tuples and dicts are allowed") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {str(e).splitlines()[0][:200]}") from None


def official_state_dict(obj) -> dict:
    """The supernet state_dict inside an official checkpoint object: under 'state_dict' (or the object
    itself), 'module.' prefixes stripped, the stored candidate tensors dropped."""
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError("checkpoint layout not recognised: expected a dict of tensors, or a dict with a "
                              "'state_dict' entry holding one (keys like 'features.1.0.binary_conv.weight')")
    out = {}
    for k, v in sd.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if k not in _OFFICIAL_EXTRA_KEYS:
            out[k] = v
    return out


def load_state_dict_checked(model: torch.nn.Module, sd: dict, source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise CheckpointError(f"{source}: state_dict does not fit this supernet: {', '.join(parts)}; "
                              f"is the space right?")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{source}: {k} has shape {tuple(v.shape)}, this supernet expects "
                                  f"{tuple(own[k].shape)}; is the space right?")
    model.load_state_dict(sd)


@dataclass
class SupernetCheckpoint:
    supernet: "torch.nn.Module"
    extra: dict


def save_supernet(path: str | Path, supernet, **extra) -> None:
    from .utils import atomic_torch_save
    atomic_torch_save({"format": FORMAT, "config": supernet.config(), "state_dict": supernet.state_dict(),
                       **extra}, path)


def load_supernet(path: str | Path, space: str | SearchSpace | None = None) -> SupernetCheckpoint:
    """A supernet from this project's checkpoint, or from an official NAS-BNN one (space defaults to
    'imagenet' there)."""
    from .supernet import SuperBNN
    obj = safe_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        cfg = obj["config"]
        sp = SearchSpace.from_dict(cfg["space"], source=f"checkpoint {path}")
        if space is not None and get_space(space).stages != sp.stages:
            raise CheckpointError(f"checkpoint {str(path)!r} holds space '{sp.name}', not {space!r}")
        net = SuperBNN(sp, cfg["weight_norm"], cfg["bi_transformation"])
        load_state_dict_checked(net, obj["state_dict"], str(path))
        return SupernetCheckpoint(net, {k: v for k, v in obj.items() if k not in ("state_dict", "config")})
    sd = official_state_dict(obj)
    net = SuperBNN(get_space(space or "imagenet"))
    load_state_dict_checked(net, sd, str(path))
    return SupernetCheckpoint(net, {"format": "official"})


def _rows(cand) -> list[list[int]]:
    if isinstance(cand, torch.Tensor):
        return cand.long().tolist()
    return [[int(x) for x in r] for r in cand]


def load_official_candidate(path: str | Path, space: SearchSpace) -> Arch:
    """An arch from an official candidate saved with torch.save (tensor or nested tuples) or as JSON."""
    p = Path(path)
    if p.suffix == ".json":
        import json
        try:
            return Arch.from_official(json.loads(p.read_text()), space)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read official candidate {str(p)!r}: {e}") from None
    return Arch.from_official(_rows(safe_load(p)), space)


@dataclass(frozen=True)
class OfficialSearchRecord:
    arch: Arch
    acc: float | None
    ops: float | None
    pareto: bool


def import_official_search(path: str | Path, space: SearchSpace | str = "imagenet") -> list[OfficialSearchRecord]:
    """The archs of an official search result file (`info.pth.tar`) with their recorded accuracy and OPs."""
    space = get_space(space)
    obj = safe_load(path)
    if not isinstance(obj, dict) or "vis_dict" not in obj:
        raise CheckpointError(f"{str(path)!r} is not an official search result: expected a dict with "
                              f"'vis_dict' and 'pareto_global'")
    pareto = {tuple(map(tuple, _rows(c))) for c in (obj.get("pareto_global") or {}).values()}
    out = []
    for cand, info in obj["vis_dict"].items():
        rows = _rows(cand)
        info = info if isinstance(info, dict) else {}

        def num(v):
            return None if v is None else float(v.item() if isinstance(v, torch.Tensor) else v)
        out.append(OfficialSearchRecord(Arch.from_official(rows, space), num(info.get("acc")), num(info.get("ops")),
                                        tuple(map(tuple, rows)) in pareto))
    return out
