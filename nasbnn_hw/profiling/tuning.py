"""Kernel schedules chosen on the device itself: `tune_layers` (what `nasbnn-hw tune` runs) and
`ScheduleBook` (which schedule every build for a device uses).

Tuning one binary layer: every candidate schedule of the target family (`schedule.candidate_schedules`:
register tiles, vector or scalar popcount, accumulator widths) is compiled, run once and checked against
the default schedule's output (a candidate that computes anything else is rejected, never stored), then
timed through the device's runner for several rounds (interleaved sample by sample where the runner can),
each candidate against the default in the same round, so a drifting machine slows all candidates alike. The winner must beat the default by `MIN_GAIN`, else the
default stays (noise must not churn schedules and with them every measurement key). The layer's winner, its
time, the default's time and every trial go into the store in one transaction: a killed tune resumes at the
first layer without a row, like profiling. Layers are tuned heaviest first (binary MACs), so `limit=N`
covers the layers that matter most.

Keys. A measurement taken with the schedule a layer had before tuning existed (`schedule.legacy_schedule`)
keeps its old key, so stores written before keep working; any other schedule is named in the key
(`"<layer key> @<fingerprint>"`; a subnet: `"<arch JSON> @<hash of its layers' schedules>"`) and in the
config, so the profiler measures a tuned layer again instead of reusing a row of another schedule, and
readers (`cost_models`) use only rows whose schedules are the ones a build would use now (`matches`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from nasbnn_hw.core.layers import LayerConfig, arch_layers
from nasbnn_hw.errors import NasBnnError
from nasbnn_hw.utils import WorkDir

log = logging.getLogger(__name__)

__all__ = ["ScheduleBook", "tune_layers", "TuneReport", "TuneError", "MIN_GAIN"]

MIN_GAIN = 0.03   # a tuned schedule must be this much faster than the default (3 %) to replace it


class TuneError(NasBnnError):
    """Tuning cannot run (a GPU target, nothing to tune)."""


class ScheduleBook:
    """The schedule of each layer for one (device, target, TVM version): tuned winners from the store, the
    target's feature-based default for every other layer. Call it with a `LayerConfig` to get the
    `CpuSchedule` a build uses (builds take it as `schedules=`)."""

    def __init__(self, spec, tuned: dict | None = None, device: str | None = None):
        from nasbnn_hw.deploy.kernels.schedule import CpuSchedule
        self.spec, self.device = spec, device
        self.tuned = {k: v if isinstance(v, CpuSchedule) else CpuSchedule.from_dict(v, f"tuned schedule of {k}")
                      for k, v in (tuned or {}).items()}

    @classmethod
    def load(cls, store, device: str, target="local", tvm_version: str | None = None) -> "ScheduleBook":
        """The book of `device` from `store` (a `MeasurementStore`, a path, or None: defaults only)."""
        from nasbnn_hw.deploy.kernels.targets import resolve_target
        from nasbnn_hw.profiling.store import MeasurementStore
        spec = resolve_target(target)
        if store is None or spec.is_gpu:
            return cls(spec, {}, device)
        from nasbnn_hw.profiling.profiler import _tvm_version
        version = tvm_version or _tvm_version()
        if isinstance(store, MeasurementStore):
            rows = store.tuned_schedules(device, spec.description(), version)
        else:
            if not Path(store).exists():
                return cls(spec, {}, device)
            with MeasurementStore(store, readonly=True) as st:
                rows = st.tuned_schedules(device, spec.description(), version)
        return cls(spec, {k: r["schedule"] for k, r in rows.items()}, device)

    def __len__(self) -> int:
        return len(self.tuned)

    def __call__(self, cfg: LayerConfig):
        """The `CpuSchedule` of `cfg` (None for layers without one: stem, head, any layer on a GPU)."""
        from nasbnn_hw.deploy.kernels.schedule import default_schedule
        if self.spec.is_gpu or cfg.kind != "bconv":
            return None
        return self.tuned.get(cfg.key()) or default_schedule(self.spec, cfg)

    def fingerprint(self, cfg: LayerConfig) -> str:
        """The name of the kernel `cfg` builds with: its `CpuSchedule`'s fingerprint; on a GPU the tiled
        conv schedule's (`schedule.GPU_SCHEDULE_ID`: stem and binary layers); '' for layers without one."""
        from nasbnn_hw.deploy.kernels.schedule import GPU_SCHEDULE_ID
        if self.spec.is_gpu:
            return GPU_SCHEDULE_ID if cfg.kind in ("stem", "bconv") else ""
        s = self(cfg)
        return "" if s is None else s.fingerprint()

    def _legacy_fingerprint(self) -> str:
        """The kernel of measurements stored without a schedule: the legacy tile; on a GPU the generic one
        ('': one thread per output, the only GPU kernel before the tiled one)."""
        from nasbnn_hw.deploy.kernels.schedule import legacy_schedule
        return "" if self.spec.is_gpu else legacy_schedule(self.spec).fingerprint()

    def _legacy(self, cfg: LayerConfig) -> bool:
        from nasbnn_hw.deploy.kernels.schedule import legacy_schedule
        if self.spec.is_gpu:
            return not self.fingerprint(cfg)
        s = self(cfg)
        return s is None or s == legacy_schedule(self.spec)

    @property
    def all_legacy(self) -> bool:
        """True when every layer builds as before schedules existed (no tuned winner, legacy defaults)."""
        from nasbnn_hw.deploy.kernels.schedule import legacy_schedule, target_defaults
        if self.spec.is_gpu:
            return False   # the tiled conv kernels
        word, others = target_defaults(self.spec)
        return all(s == legacy_schedule(self.spec) for s in self.tuned.values()) and \
            word == legacy_schedule(self.spec) and not others

    # --- keys and configs of measurements
    def layer_key(self, cfg: LayerConfig) -> str:
        return cfg.key() if self._legacy(cfg) else f"{cfg.key()} @{self.fingerprint(cfg)}"

    def layer_config(self, cfg: LayerConfig) -> dict:
        d = cfg.to_dict()
        if self.fingerprint(cfg):
            d["schedule"] = self.fingerprint(cfg)
        return d

    def subnet_schedule_id(self, layers: Iterable[LayerConfig]) -> str:
        """'' when every layer has its legacy schedule, else a short hash of the layers' schedules."""
        if self.all_legacy:
            return ""
        own = [(c.key(), self.fingerprint(c)) for c in layers if not self._legacy(c)]
        return hashlib.sha256(json.dumps(sorted(set(own))).encode()).hexdigest()[:12] if own else ""

    def subnet_key(self, arch, space) -> str:
        sid = self.subnet_schedule_id(arch_layers(arch, space))
        return arch.to_json() + (f" @{sid}" if sid else "")

    def matches(self, m, layer: LayerConfig | None = None, subnet: tuple | None = None) -> bool:
        """Whether measurement `m` was taken with the schedules a build uses now. `layer`: its LayerConfig
        (a layer row); `subnet`: (space, arch) of a subnet row. Rows without schedule information were
        taken with the legacy schedules."""
        if m.kind == "layer" and layer is not None:
            if not self.fingerprint(layer):
                return True
            return m.config.get("schedule", self._legacy_fingerprint()) == self.fingerprint(layer)
        if m.kind == "subnet":
            got = m.config.get("schedule_id", "")
            if self.all_legacy:
                return got == ""
            if subnet is None:
                return False
            return got == self.subnet_schedule_id(arch_layers(subnet[1], subnet[0]))
        return True


@dataclass
class TuneReport:
    tuned: list[dict] = field(default_factory=list)  # per layer: layer, default_s, best_s, schedule, candidates
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        s = f"{len(self.tuned)} layer(s) tuned, {self.skipped} already tuned"
        if self.tuned:
            gains = [r["default_s"] / r["best_s"] for r in self.tuned]
            changed = sum(r["schedule"] != r["default"] for r in self.tuned)
            s += (f"; {changed} changed schedule, speed-up over the default: median {np.median(gains):.2f}x, "
                  f"max {max(gains):.2f}x")
        s += f" ({self.seconds / 60:.1f} min)"
        return s + (f", {len(self.failed)} failed" if self.failed else "")


def _binary_macs(cfg: LayerConfig) -> int:
    pad = cfg.kernel // 2
    ho = (cfg.resolution + 2 * pad - cfg.kernel) // cfg.stride + 1
    return ho * ho * cfg.out_channels * (cfg.in_channels // cfg.groups) * cfg.kernel * cfg.kernel


def tune_layers(space, device: str, store, runner=None, target="local", *, timing=None,
                layers: Iterable[LayerConfig] | None = None, limit: int | None = None, rounds: int = 3,
                progress: bool = True, workdir: Path | None = None, stop_on_error: bool = False) -> TuneReport:
    """Tune every binary layer of `space` (or the given `layers`) on `device`, heaviest first, or only the
    `limit` heaviest; store each winner (see the module docstring). Layers already tuned are skipped, so
    the same call resumes a killed one."""
    from nasbnn_hw.core.space import get_space
    from nasbnn_hw.deploy.kernels import resolve_target
    from nasbnn_hw.deploy.kernels.schedule import candidate_schedules, default_schedule
    from nasbnn_hw.profiling.profiler import TimingSettings, _Clock, _device_level, _failure, _progress, \
        _tvm_version, default_runner, enumerate_layers
    if not isinstance(rounds, int) or rounds < 1:
        raise TuneError(f"rounds must be an integer >= 1 (got {rounds!r})")
    spec = resolve_target(target)
    if spec.is_gpu:
        raise TuneError(f"target {spec.name!r} is a GPU: its kernels have one generic schedule, nothing to tune "
                        f"(tuning covers CPU targets)")
    space = get_space(space)
    cfgs = [c for c in (list(layers) if layers is not None else enumerate_layers(space)) if c.kind == "bconv"]
    cfgs = sorted(dict.fromkeys(cfgs), key=_binary_macs, reverse=True)[:limit]  # the same command resumes
    version, target_key = _tvm_version(), spec.description()
    done = store.tuned_schedules(device, target_key, version)
    report = TuneReport(skipped=sum(c.key() in done for c in cfgs))
    todo = [c for c in cfgs if c.key() not in done]
    runner = runner or default_runner()
    timing = timing or TimingSettings(warmup=2, repeat=10, min_sample_ms=5.0)
    t0 = time.time()
    with WorkDir("nasbnn-tune-", dir=workdir) as tmp, _progress(len(todo), f"tuning on {device}", progress) as bar:
        clock = _Clock(runner, timing, store, device, spec, version, Path(tmp)) if todo else None
        for cfg in todo:
            bar.set_postfix_str(cfg.key(), refresh=False)
            try:
                row = _tune_one(cfg, spec, runner, clock, rounds, Path(tmp), candidate_schedules(spec, cfg),
                                default_schedule(spec, cfg))
            except Exception as e:  # noqa: BLE001 - one bad layer must not end a long run; it is reported
                if stop_on_error or _device_level(e):
                    raise
                report.failed[cfg.key()] = _failure(e)
                log.warning("tuning %s failed: %s", cfg.key(), report.failed[cfg.key()])
                bar.update(1)
                continue
            if row is not None and store.add_tuned_schedule(device, target_key, version, cfg.key(), row["winner"],
                                                            row["best_s"], row["default_s"], row["trials"]):
                report.tuned.append({"layer": cfg.key(), "default_s": row["default_s"], "best_s": row["best_s"],
                                     "schedule": row["fingerprint"], "default": row["default"],
                                     "candidates": len(row["trials"])})
            bar.update(1)
    report.seconds = time.time() - t0
    return report


def _tune_one(cfg, spec, runner, clock, rounds: int, tmp: Path, cands, default) -> dict | None:
    from nasbnn_hw.deploy.kernels import build_layer
    if len(cands) < 2:
        return None
    libs = []
    for i, s in enumerate(cands):
        lay = build_layer(cfg, spec, batch=1, schedule=s)
        libs.append((s, lay.export(tmp / f"tune-{i}.so"), lay.args))
    trials = {s.fingerprint(): {"schedule": s.fingerprint(), "median_s": None} for s in cands}
    ref = None
    ok = []
    for s, lib, args in libs:  # the same random arguments for all: outputs must agree with the default's
        out = runner.time_library(lib, args, warmup=0, repeat=1, number=1, return_outputs=True).outputs
        if out is None:
            ok.append((s, lib, args))
            continue
        if ref is None:
            ref = out[0]
        if np.allclose(out[0], ref, rtol=1e-5, atol=1e-5):
            ok.append((s, lib, args))
        else:
            trials[s.fingerprint()]["rejected"] = "output differs from the default schedule's"
            log.warning("%s: schedule %s computes another result; rejected", cfg.key(), s.fingerprint())
    if not ok or ok[0][0] != default:
        raise TuneError(f"layer {cfg.key()}: the default schedule did not run")
    times = _time_rounds(runner, clock, ok, rounds)
    for s, lib, _ in libs:
        Path(lib).unlink(missing_ok=True)
    dfp = default.fingerprint()
    med = {fp: float(np.median(v)) for fp, v in times.items()}
    # decided on each round's ratio to the default, measured beside it: a machine whose speed drifts
    # between rounds changes both alike
    ratio = {fp: float(np.median([t / d for t, d in zip(v, times[dfp])])) for fp, v in times.items()}
    for fp, v in med.items():
        trials[fp]["median_s"] = v
        trials[fp]["vs_default"] = ratio[fp]
    best = min(ok, key=lambda t: ratio[t[0].fingerprint()])[0]
    if ratio[best.fingerprint()] > 1 - MIN_GAIN:
        best = default
    d = med[dfp]
    return {"winner": best.to_dict(), "fingerprint": best.fingerprint(), "default": dfp,
            "best_s": d * ratio[best.fingerprint()], "default_s": d, "trials": list(trials.values())}


def _time_rounds(runner, clock, items, rounds: int) -> dict[str, list[float]]:
    """Each candidate's time per round (seconds). A runner that can interleave (`LocalRunner`) alternates
    single samples of all candidates, so neighbouring samples see the same state of the machine (on a
    2-vCPU VM, candidates timed one after the other drifted by up to 60 % against each other); others are
    timed one after the other under the device's protocol, the order alternating between rounds."""
    out: dict[str, list[float]] = {s.fingerprint(): [] for s, _, _ in items}
    interleave = getattr(runner, "time_interleaved", None)
    numbers = None
    if interleave is not None:
        numbers = []
        for s, lib, args in items:  # calls per sample: about a millisecond each
            t = min(runner.time_library(lib, args, warmup=1, repeat=3, number=1).samples)
            numbers.append(max(1, min(1000, round(1e-3 / max(t, 1e-9)))))
    spread = getattr(runner, "stack_depths", 0)
    for r in range(rounds):
        order = items if r % 2 == 0 else items[::-1]  # no candidate always runs first
        if interleave is not None:
            nums = numbers if r % 2 == 0 else numbers[::-1]
            # each round at another call depth (the stack's page offset moves a kernel's time; see
            # `runners.local.at_stack_depth`), so the median over rounds does not keep one offset's verdict
            kw = {"depths": [r % spread] * len(order)} if spread > 1 else {}
            # at least 30 samples per candidate and round, whatever the profile's per-visit sample count
            samples = interleave([(lib, args, n) for (_, lib, args), n in zip(order, nums)],
                                 warmup=clock.protocol.warmup, repeat=max(30, clock.protocol.repeat * clock.protocol.bursts),
                                 **kw)
            for (s, _, _), v in zip(order, samples):
                out[s.fingerprint()].append(float(np.median(v)))
        else:
            for s, lib, args in order:
                out[s.fingerprint()].append(clock.time(lib, args)[0])
    return out
