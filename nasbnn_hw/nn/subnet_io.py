"""From a checkpoint to a deployable static subnet: BN recalibration for supernet checkpoints, and the
file format of fine-tuned subnets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from nasbnn_hw.core.arch import Arch, validate
from nasbnn_hw.nn.checkpoint import safe_load
from nasbnn_hw.data.sets import Splits, load_splits
from nasbnn_hw.errors import CheckpointError
from nasbnn_hw.train.evaluate import calibration_batches, recalibrate_bn
from nasbnn_hw.core.space import SearchSpace
from nasbnn_hw.nn.supernet import StaticSubnet, SuperBNN, extract_subnet
from nasbnn_hw.utils import atomic_torch_save

SUBNET_FORMAT = "nasbnn-hw/subnet-v1"


@dataclass
class CalibrationConfig:
    num_batches: int = 10
    batch_size: int = 256
    seed: int = 0


def data_for_checkpoint(extra: dict, space: SearchSpace, override: str | None = None) -> Splits:
    """The splits a supernet was trained on (recorded in its checkpoint), or `override`."""
    d = extra.get("data_config") or {}
    source = override or d.get("source")
    if not source:
        raise CheckpointError("this checkpoint does not record its training data: pass --data")
    return load_splits(source, space.resolution, space.in_channels, d.get("val_fraction", 0.1),
                       d.get("limit_train"), d.get("split_seed", 0), strict_images=d.get("strict_images", False))


def recalibrated_subnet(supernet: SuperBNN, arch: Arch, splits: Splits,
                        calib: CalibrationConfig = CalibrationConfig()) -> StaticSubnet:
    validate(arch, supernet.space)
    recalibrate_bn(supernet, arch, calibration_batches(splits.train, calib.num_batches, calib.batch_size, calib.seed))
    return extract_subnet(supernet, arch)


def save_subnet(path: str | Path, subnet: StaticSubnet, supernet: SuperBNN, **extra) -> None:
    atomic_torch_save({"format": SUBNET_FORMAT, "config": supernet.config(), "arch": subnet.arch.to_dict(),
                       "state_dict": subnet.state_dict(), **extra}, path)


def load_subnet(path: str | Path, obj: dict | None = None) -> StaticSubnet:
    """A subnet file as a static module (`obj`: the file's contents, when already loaded)."""
    obj = safe_load(path) if obj is None else obj
    if not isinstance(obj, dict) or obj.get("format") != SUBNET_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a subnet file ({SUBNET_FORMAT})")
    cfg = obj["config"]
    space = SearchSpace.from_dict(cfg["space"], source=str(path))
    arch = Arch.from_dict(obj["arch"])
    sub = extract_subnet(SuperBNN(space, cfg["weight_norm"], cfg["bi_transformation"]), arch)
    sub.load_state_dict(obj["state_dict"])
    return sub.eval()
