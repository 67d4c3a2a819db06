"""Reading one device's measurements out of a `MeasurementStore`."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from nasbnn_hw.core.arch import Arch
from nasbnn_hw.errors import NasBnnError
from nasbnn_hw.core.layers import LayerConfig
from nasbnn_hw.core.space import SearchSpace, get_space
from nasbnn_hw.profiling.store import Measurement, MeasurementStore

from .errors import CostModelError

log = logging.getLogger(__name__)

__all__ = ["DeviceMeasurements", "load_device_measurements", "subnet_space_arch", "layer_from_config"]

_LAYER_FIELDS = ("kind", "in_channels", "out_channels", "kernel", "groups", "stride", "resolution")


def layer_from_config(cfg: dict, source: str = "a layer measurement") -> LayerConfig:
    """The `LayerConfig` of a stored layer row (extra keys a profiler may add are ignored)."""
    try:
        return LayerConfig(str(cfg["kind"]), *(int(cfg[k]) for k in _LAYER_FIELDS[1:]))
    except (KeyError, TypeError, ValueError) as e:
        raise CostModelError(f"{source}: config {cfg!r} is not a layer config (needs {', '.join(_LAYER_FIELDS)}): "
                             f"{e}") from None


@dataclass(frozen=True)
class DeviceMeasurements:
    device: str
    target: str
    tvm_version: str
    layers: dict[str, Measurement]        # LayerConfig.key() -> measurement
    subnets: tuple[Measurement, ...]
    source: str

    def layer_config(self, key: str) -> LayerConfig:
        return layer_from_config(self.layers[key].config)


def open_store(store, readonly: bool = True) -> tuple[MeasurementStore, bool]:
    if isinstance(store, MeasurementStore):
        return store, False
    if store is None:
        raise CostModelError("this cost model needs a measurement store (store=PATH or a MeasurementStore)")
    if not Path(store).exists():
        raise CostModelError(f"measurement store {str(store)!r} does not exist")
    return MeasurementStore(store, readonly=readonly), True


def load_device_measurements(store, device: str, target: str | None = None,
                             tvm_version: str | None = None) -> DeviceMeasurements:
    """All layer and subnet rows of `device`; with several (target, TVM version) pairs, one must be chosen."""
    st, owned = open_store(store)
    try:
        rows = [m for m in st.query(device=device, target=target)  # any spelling of the target
                if tvm_version is None or m.tvm_version == tvm_version]
        source = str(st.path)
        if not rows:
            devices = st.devices()
            raise CostModelError(f"no measurements for device {device!r} in {source} "
                                 f"(devices there: {', '.join(devices) or 'none'}); profile it first with "
                                 f"`nasbnn-hw profile --device {device}`")
        combos = sorted({(m.target, m.tvm_version) for m in rows})
        if len(combos) > 1:
            raise CostModelError(f"device {device!r} has measurements for several (target, TVM version) pairs "
                                 f"{combos}; choose one with --target and --tvm-version (Python: target=, "
                                 f"tvm_version=)")
        tgt, ver = combos[0]
        book = _schedule_book(st, device, tgt, ver)
    finally:
        if owned:
            st.close()
    # keyed by the config's own key, so a profiler's choice of row key cannot break lookups; only rows taken
    # with the schedules a build uses now (tuning changes them: rows of the old schedules stay, unused)
    layers, dropped = {}, 0
    for m in rows:
        if m.kind == "layer":
            cfg = layer_from_config(m.config, f"{source} row {m.key!r}")
            if book is None or book.matches(m, layer=cfg):
                layers[cfg.key()] = m
            else:
                dropped += 1
    subnets = []
    for m in rows:
        if m.kind == "subnet":
            if book is None or book.matches(m, subnet=None if book.all_legacy else subnet_space_arch(m)):
                subnets.append(m)
            else:
                dropped += 1
    if dropped:
        log.warning("%d measurement(s) of %s were taken with other kernel schedules than builds use now (a "
                    "tune, or this target's default): not used; `nasbnn-hw profile --device %s ...` measures "
                    "them again with the current ones", dropped, device, device)
    return DeviceMeasurements(device, tgt, ver, layers, tuple(subnets), source)


def _schedule_book(st: MeasurementStore, device: str, target: str, version: str):
    """The device's `ScheduleBook` for a stored target text; None when the target is not one the kernels
    can build (rows of such targets are all used)."""
    from nasbnn_hw.deploy.kernels.targets import resolve_target
    from nasbnn_hw.profiling.tuning import ScheduleBook
    try:
        spec = resolve_target(_target_dict(target))
    except (NasBnnError, ValueError, TypeError, KeyError):
        return None
    return ScheduleBook(spec, {k: r["schedule"] for k, r in st.tuned_schedules(device, target, version).items()},
                        device)


def _target_dict(target: str) -> dict:
    """The TVM target dict of a canonical store target text ({"target": {...}, "host": {...}})."""
    import json
    d = json.loads(target)
    cfg = dict(d["target"])
    if d.get("host"):
        cfg["host"] = d["host"]
    return cfg


def subnet_space_arch(m: Measurement, default: SearchSpace | None = None) -> tuple[SearchSpace, Arch] | None:
    """The space (at the measured resolution) and arch of a subnet row; None if the space is unknown here."""
    cfg = m.config
    try:
        name = cfg["space"]
        if default is not None and default.name == name:
            space = default
        elif "space_def" in cfg:  # custom spaces travel with their measurements
            space = SearchSpace.from_dict(cfg["space_def"], source=f"measurement {m.key[:40]}")
        else:
            space = get_space(name)
        if "resolution" in cfg and int(cfg["resolution"]) != space.resolution:
            space = space.with_resolution(int(cfg["resolution"]))
        return space, Arch.from_dict(cfg["arch"])
    except (KeyError, TypeError, NasBnnError) as e:
        log.warning("skipping subnet measurement %s: %s", m.key[:60], e)
        return None
