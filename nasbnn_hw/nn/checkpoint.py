"""Loading checkpoints safely (never arbitrary unpickling) and the project's own supernet checkpoints,
including those saved by the official NAS-BNN code."""
from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from nasbnn_hw.core.arch import Arch, official_rows
from nasbnn_hw.errors import ArchError, CheckpointError
from nasbnn_hw.core.space import SearchSpace, get_space

FORMAT = "nasbnn-hw/supernet-v1"
_OFFICIAL_EXTRA_KEYS = ("biggest_cand", "smallest_cand")


def safe_load(path: str | Path):
    """torch.load with weights_only=True; a file that needs arbitrary unpickling is refused, naming the
    global it asks for."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names the global both when it is merely not allow-listed and when its module is blocked
        # (os.system: "unsupported GLOBAL posix.system whose module posix is blocked")
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        if m is None:
            raise CheckpointError(f"cannot read checkpoint {str(path)!r}: not a torch.save file") from None
        raise CheckpointError(f"refusing to load {str(path)!r}: it needs arbitrary unpickling ({m.group(1)}), which "
                              f"could run code; only tensors, numbers, strings, lists, tuples and dicts are allowed") from None
    except Exception as e:  # noqa: BLE001 - a foreign or truncated file raises RuntimeError, EOFError, KeyError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: not a readable torch.save file ({first})") from None


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
    from nasbnn_hw.utils import atomic_torch_save
    atomic_torch_save({"format": FORMAT, "config": supernet.config(), "state_dict": supernet.state_dict(),
                       **extra}, path)


def load_supernet(path: str | Path, space: str | SearchSpace | None = None) -> SupernetCheckpoint:
    """A supernet from this project's checkpoint, or from an official NAS-BNN one (space defaults to
    'imagenet' there)."""
    from nasbnn_hw.nn.supernet import SuperBNN
    obj = safe_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        cfg = obj.get("config")
        if not isinstance(cfg, dict) or not isinstance(cfg.get("space"), dict) \
                or type(cfg.get("weight_norm")) is not bool or type(cfg.get("bi_transformation")) is not bool:
            raise CheckpointError(f"checkpoint {str(path)!r}: its 'config' is missing or malformed (expected a "
                                  "dict with 'space' (a dict), 'weight_norm' and 'bi_transformation' (booleans))")
        sd = obj.get("state_dict")
        if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
            raise CheckpointError(f"checkpoint {str(path)!r}: its 'state_dict' is missing or not a dict of tensors")
        sp = SearchSpace.from_dict(cfg["space"], source=f"checkpoint {path}")
        if space is not None and get_space(space).stages != sp.stages:
            raise CheckpointError(f"checkpoint {str(path)!r} holds space '{sp.name}', not {space!r}")
        net = SuperBNN(sp, cfg["weight_norm"], cfg["bi_transformation"])
        load_state_dict_checked(net, obj["state_dict"], str(path))
        return SupernetCheckpoint(net, {k: v for k, v in obj.items() if k not in ("state_dict", "config")})
    try:
        sd = official_state_dict(obj)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: {e}") from None
    net = SuperBNN(get_space(space or "imagenet"))
    load_state_dict_checked(net, sd, str(path))
    return SupernetCheckpoint(net, {"format": "official"})


def load_official_candidate(path: str | Path, space: SearchSpace) -> Arch:
    """An arch from an official candidate saved with torch.save (tensor or nested tuples) or as JSON."""
    p = Path(path)
    if p.suffix == ".json":
        import json
        try:
            rows = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read official candidate {str(p)!r}: {e}") from None
    else:
        rows = safe_load(p)
    try:
        return Arch.from_official(rows, space)
    except ArchError as e:
        raise ArchError(f"{str(p)!r}: {e}") from None


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
    vis, par = obj["vis_dict"], obj.get("pareto_global") or {}
    if not isinstance(vis, dict) or not isinstance(par, dict):
        raise CheckpointError(f"{str(path)!r}: 'vis_dict' and 'pareto_global' must be dicts (candidate -> info), "
                              f"got {type(vis).__name__} and {type(par).__name__}")

    def num(v, what: str, cand):
        if v is None:
            return None
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if type(v) not in (int, float) or v != v or v in (float("inf"), float("-inf")):
            raise CheckpointError(f"{str(path)!r}: candidate {str(cand)[:60]}: {what}={str(v)[:40]!r} is not a "
                                  "finite number")
        return float(v)
    try:
        pareto = {tuple(map(tuple, official_rows(c))) for c in par.values()}
        out = []
        for cand, info in vis.items():
            rows = official_rows(cand)
            info = info if isinstance(info, dict) else {}
            out.append(OfficialSearchRecord(Arch.from_official(rows, space), num(info.get("acc"), "acc", cand),
                                            num(info.get("ops"), "ops", cand), tuple(map(tuple, rows)) in pareto))
    except ArchError as e:
        raise ArchError(f"{str(path)!r}: {e}") from None
    return out
