"""The timing protocol: latencies that are a property of the device, not of the minute they were taken in.

A shared machine's speed drifts (other processes, shared cores, host contention): on a 2-vCPU VM the same
subnet measured a minute apart moved by 20-40 %. Two things take that out:

1. A fixed *reference kernel* timed right beside the item. A runner that can interleave
   (`LocalRunner.time_interleaved`) alternates single samples, so each item sample is bracketed by two
   reference samples taken within about a millisecond of it; other runners time a reference burst before
   each item burst. Each item sample is divided by the median of the reference samples around it (the two
   beside it and one more on each side: one disturbed reference sample, which would make the item read
   fast, is ignored; bursts: by the mean of the reference burst medians before and after it) and multiplied
   by `baseline`, the reference's time on that device, measured once (`calibrate_reference`) and
   kept with the measurements (`MeasurementStore.reference_baseline`): every item of a device is in the same
   units whenever it was measured, and the machine's speed of that millisecond cancels.
2. *Rounds*: the profiler visits every item of a campaign several times, round by round, taking a few
   samples per visit, so each item's samples spread over the whole campaign instead of one contiguous
   block. A competing process or a neighbour on the host slows the machine for 0.5-2 s at a time, and
   cache-heavy subnets slow down more than the L1-resident reference; spread, every item sees the same mix
   of quiet and busy phases.
3. *Call depths* (local runner): a kernel's time depends on where its stack data falls within a page, which
   the OS randomises per process; at some offsets a kernel ran 15-50 % slower. Each visit of an item runs at
   the next of `LocalRunner.stack_depths` C-stack depths, the reference at one depth chosen per process (where
   its time is the median), so the kept value is the item's, not one process's offset.

The value kept is the 20th percentile of all the item's normalised samples, pooled over its rounds
(`pooled_estimate`): disturbances only ever add time, so a low quantile keeps the undisturbed machine (as
long as a disturbed reference sample cannot divide an item sample down: hence the median above).
Which estimator holds best was measured side by side on the same samples (`benchmarks/self_agreement.py`,
docs/measurements.md).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from nasbnn_hw.errors import NasBnnError
from nasbnn_hw.core.layers import LayerConfig
from nasbnn_hw.profiling.runners.base import ArgSpec

__all__ = ["REFERENCE_LAYER", "Protocol", "ItemTiming", "estimate", "pooled_estimate", "quantile_ci",
           "reference_library", "reference_key", "reference_schedule", "ESTIMATORS"]

# A mid-sized binary layer (popcount-bound, fits in L1/L2 like the small spaces' layers): 3-4 us on a Zen 4
# core with AVX-512 VPOPCNTDQ, 8-11 us in the AVX2 build on the same core. A layer
# that streams 2 MB of weights per call (a 4096 x 4096-bit GEMV) tracked cache-heavy imagenet@64 subnets
# better on an AVX-512 VM, but over-corrected L1-resident items while another process loaded the memory, and
# was erratic in the AVX2 build (`benchmarks/self_agreement.py --reference memory`, docs/measurements.md).
REFERENCE_LAYER = LayerConfig("bconv", 64, 64, 3, 1, 1, 8)
ESTIMATORS = ("median", "min", "reference", "bracket", "low", "bracket-low")
LOW_QUANTILE = 20
# What the profiler stores: the 20th percentile of the item's samples, each against the reference samples
# around it (the two just before and after it and one more on each side, their median: `ItemTiming._refs`;
# bracket-low); over several rounds (visits spread over the campaign) the
# same percentile of every round's samples pooled (`pooled_estimate`). A disturbed sample only ever runs
# slower, so a low quantile keeps the undisturbed machine; the median of few samples follows whichever phase
# the visit fell in. Chosen from benchmarks/self_agreement.py on Zen 3 and Zen 4 VMs (docs/measurements.md).
PROTOCOL_ESTIMATOR = "bracket-low"


@dataclass(frozen=True)
class ItemTiming:
    """One item's raw measurement: per burst, the item's samples and the reference's samples (seconds)."""
    bursts: tuple[tuple[float, ...], ...]
    reference: tuple[tuple[float, ...], ...] = ()
    number: int = 1

    @property
    def samples(self) -> tuple[float, ...]:
        return tuple(s for b in self.bursts for s in b)

    @property
    def reference_s(self) -> tuple[float, ...]:
        """Each burst's reference median."""
        return tuple(statistics.median(r) for r in self.reference)

    def _refs(self, bracket: bool) -> list[float]:
        r = list(self.reference_s)
        if bracket and len(r) > len(self.bursts):
            if any(len(x) > 1 for x in self.reference):   # bursts of samples: each already their median
                return [(a + b) / 2 for a, b in zip(r, r[1:])]
            # single samples (interleaved): sample i lies between reference samples i and i + 1; the median
            # of those two and one more on each side (up to four). A disturbed reference sample runs slow,
            # and divided by it an item sample reads fast: the low quantile the profiler keeps would pick
            # exactly those (with the mean of the two beside it, 69 % too fast beside an AMX neighbour,
            # docs/measurements.md); the median ignores one such sample and still follows a drift.
            return [float(np.median(r[max(0, i - 1):i + 3])) for i in range(len(self.bursts))]
        return r[:len(self.bursts)]

    def ratios(self, bracket: bool = False) -> list[float]:
        return [statistics.median(b) / r for b, r in zip(self.bursts, self._refs(bracket))]

    def normalised_samples(self, baseline: float) -> tuple[float, ...]:
        """Each sample in reference units (times the baseline): what the store keeps."""
        return tuple(s / r * baseline for b, r in zip(self.bursts, self._refs(True)) for s in b)


def estimate(m: ItemTiming, name: str, baseline: float | None = None) -> float:
    """Seconds per call of `m` by estimator `name` (one of ESTIMATORS)."""
    if name == "median":
        return statistics.median(m.samples)
    if name == "min":
        return min(m.samples)
    if name in ("low", "bracket-low", "reference", "bracket") and (not baseline or not m.reference):
        raise NasBnnError(f"the {name} estimator needs reference samples and a baseline")
    if name == "low":
        q = lambda xs: float(np.percentile(xs, LOW_QUANTILE))  # noqa: E731
        return q(m.samples) / q([x for r in m.reference for x in r]) * baseline
    if name == "bracket-low":
        return pooled_estimate([m.normalised_samples(baseline)])
    if name in ("reference", "bracket"):
        return statistics.median(m.ratios(bracket=name == "bracket")) * baseline
    raise NasBnnError(f"unknown estimator {name!r} (allowed: {', '.join(ESTIMATORS)})")


def pooled_estimate(rounds: Sequence[Sequence[float]]) -> float:
    """The protocol's value of an item measured in one or more rounds: the LOW_QUANTILE-th percentile of
    all rounds' (normalised) samples pooled."""
    xs = [x for r in rounds for x in r]
    if not xs:
        raise NasBnnError("no samples to estimate from")
    return float(np.percentile(xs, LOW_QUANTILE))


def quantile_ci(samples: Sequence[float], q: float = LOW_QUANTILE) -> float:
    """How far the `q`-th percentile of `samples` could still move: the half-width of its distribution-free
    95 % confidence interval (the order statistics n*p -/+ 1.96 sqrt(n p (1 - p)), p = q/100), relative to the
    percentile. inf with fewer than 2 samples. The profiler adds rounds to an item until this is at most the
    device's `precision` (docs/measurements.md)."""
    xs = sorted(samples)
    n = len(xs)
    if n < 2:
        return math.inf
    p = q / 100
    sd = 1.96 * math.sqrt(n * p * (1 - p))
    lo, hi = max(0, math.floor(n * p - sd)), min(n - 1, math.ceil(n * p + sd))
    mid = float(np.percentile(xs, q))
    return (xs[hi] - xs[lo]) / 2 / mid if mid > 0 else math.inf


def reference_schedule(spec):
    """The reference kernel's schedule on target `spec` (a `TargetSpec`; None on a GPU): the target's word
    schedule (`schedule.target_defaults`), which fits the register file. That is the legacy tile except on
    x86 without AVX-512, where the legacy 7 x 16 int64 tile spills its accumulators: there its time moved by
    up to 25 % from one process to the next while non-spilling tiles and whole subnets moved by 1 %, and every
    measurement normalised by it moved with it (docs/measurements.md)."""
    from nasbnn_hw.deploy.kernels.schedule import target_defaults
    return None if spec.is_gpu else target_defaults(spec)[0]


def reference_key(spec) -> str:
    """The reference kernel's name in the store's `reference` table: `REFERENCE_LAYER`'s key, with its
    schedule where that is not the legacy tile, and `+<revision>` (`schedule.kernel_revision`: `+sign8+stack`
    on x86 with AVX, `+stack` on other CPUs; baselines calibrated before timed older, slower kernels),
    so a baseline calibrated for one kernel never serves another."""
    from nasbnn_hw.deploy.kernels.schedule import kernel_revision, legacy_schedule
    sched = reference_schedule(spec)
    key = REFERENCE_LAYER.key() if sched in (None, legacy_schedule(spec)) else \
        f"{REFERENCE_LAYER.key()} @{sched.fingerprint()}"
    rev = kernel_revision(spec)
    return f"{key} +{rev}" if rev else key


def reference_library(workdir: Path, target) -> tuple[Path, list[ArgSpec]]:
    """Compile the reference kernel for `target` into `workdir` (`reference_schedule`): (library path, its
    arguments)."""
    from nasbnn_hw.deploy.kernels import build_layer, resolve_target
    spec = resolve_target(target)
    lay = build_layer(REFERENCE_LAYER, spec, batch=1, schedule=reference_schedule(spec))
    return lay.export(Path(workdir) / f"reference-{REFERENCE_LAYER.key()}.so"), lay.args


def _plain(args: Sequence[ArgSpec]) -> list[ArgSpec]:
    # values do not change the time of these kernels (no data-dependent control flow or indexing): the
    # runner generates its own inputs, so nothing but the library has to travel to a remote device
    return [ArgSpec(a.shape, a.dtype, a.is_output) for a in args]


@dataclass
class Protocol:
    """`bursts` x (reference, then item), each `repeat` samples of `number` calls lasting >= `min_sample_ms`
    (number=0: calibrated per library). `warmup` calls before each library's first burst."""
    bursts: int = 5
    repeat: int = 5
    warmup: int = 5
    number: int = 0
    min_sample_ms: float = 1.0
    _numbers: dict = field(default_factory=dict, repr=False)
    _probe_s: dict = field(default_factory=dict, repr=False)
    _visits: dict = field(default_factory=dict, repr=False)
    _ref_depth: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.bursts < 1 or self.repeat < 1 or self.warmup < 0 or self.number < 0 or self.min_sample_ms <= 0:
            raise NasBnnError(f"timing protocol bursts={self.bursts}, repeat={self.repeat} must be >= 1, "
                              f"warmup={self.warmup}, number={self.number} >= 0, min_sample_ms > 0")

    def _number(self, runner, lib: Path, args) -> int:
        if self.number:
            return self.number
        key = str(lib)
        if key not in self._numbers:
            probe = runner.time_library(lib, args, warmup=self.warmup, repeat=3, number=1)
            self._probe_s[key] = probe.median
            self._numbers[key] = max(1, min(100_000, math.ceil(self.min_sample_ms / 1e3 / max(probe.median, 1e-8))))
        return self._numbers[key]

    def _samples(self, runner, lib: Path, args, number: int) -> tuple[float, ...]:
        return runner.time_library(lib, args, warmup=1, repeat=self.repeat, number=number).samples

    def _reference_depth(self, runner, lib: Path, args, number: int) -> int | None:
        """The call depth the reference is timed at in this process, on a runner that can spread samples over
        depths (`stack_depths`): of the depths, the one where its time is the median, so that a depth where
        the stack's offset in this process makes the reference slow (or fast) never scales the items."""
        spread = getattr(runner, "stack_depths", 0) if hasattr(runner, "time_interleaved") else 0
        if spread < 2:
            return None
        key = str(lib)
        if key not in self._ref_depth:
            times = runner.time_interleaved([(lib, args, number)] * spread, warmup=self.warmup, repeat=5,
                                            depths=list(range(spread)))
            med = [statistics.median(t) for t in times]
            self._ref_depth[key] = sorted(range(spread), key=med.__getitem__)[spread // 2]
        return self._ref_depth[key]

    def calibrate_reference(self, runner, reference: tuple[Path, Sequence[ArgSpec]], bursts: int = 20) -> float:
        """The reference kernel's time on this device: the median of `bursts` burst medians (seconds), at the
        reference's call depth where the runner has depths."""
        lib, args = reference[0], _plain(reference[1])
        n = self._number(runner, lib, args)
        depth = self._reference_depth(runner, lib, args, n)
        if depth is None:
            def burst():
                return self._samples(runner, lib, args, n)
        else:
            def burst():
                return runner.time_interleaved([(lib, args, n)], warmup=1, repeat=self.repeat, depths=[depth])[0]
        return statistics.median(statistics.median(burst()) for _ in range(bursts))

    def measure(self, runner, lib: Path, args: Sequence[ArgSpec],
                reference: tuple[Path, Sequence[ArgSpec]] | None) -> ItemTiming:
        """Time `lib`; with a reference, each burst times the reference right before the item (and once
        more after the last). A runner that can interleave (`time_interleaved`) alternates single samples
        of the reference and the item instead: every burst is then one sample, bracketed by two reference
        samples taken just before and after it (`ItemTiming._refs` normalises by those and their neighbours);
        on a runner with call depths (`LocalRunner.stack_depths`) each call of `measure` for an item takes the
        next depth, the reference always its own (`_reference_depth`)."""
        args = _plain(args)
        n = self._number(runner, lib, args)
        if reference is not None and hasattr(runner, "time_interleaved"):
            rlib, rargs = reference[0], _plain(reference[1])
            rn = self._number(runner, rlib, rargs)
            # a reference sample spans as long as an item sample: both average the machine over one window
            item_s, ref_s = self._probe_s.get(str(lib)), self._probe_s.get(str(rlib))
            if item_s and ref_s and n * item_s > rn * ref_s:
                rn = min(100_000, math.ceil(n * item_s / ref_s))
            count = self.bursts * self.repeat
            depth = self._reference_depth(runner, rlib, rargs, rn)
            kw = {}
            if depth is not None:   # each visit of an item at the next call depth; the reference at its own
                visit = self._visits.get(str(lib), 0)
                self._visits[str(lib)] = visit + 1
                kw["depths"] = [depth, visit % runner.stack_depths]
            ref_s, item_s = runner.time_interleaved([(rlib, rargs, rn), (lib, args, n)], warmup=self.warmup,
                                                    repeat=count + 1, **kw)
            return ItemTiming(tuple((x,) for x in item_s[:count]), tuple((x,) for x in ref_s), n)
        bursts, refs = [], []
        if reference is not None:
            rlib, rargs = reference[0], _plain(reference[1])
            rn = self._number(runner, rlib, rargs)
        for _ in range(self.bursts):
            if reference is not None:
                refs.append(self._samples(runner, rlib, rargs, rn))
            bursts.append(self._samples(runner, lib, args, n))
        if reference is not None:  # closing reference: each burst is bracketed by two
            refs.append(self._samples(runner, rlib, rargs, rn))
        return ItemTiming(tuple(bursts), tuple(refs), n)


# The probes of `noise_floor`: a small and a larger binary layer beside the reference kernel.
NOISE_PROBES = (LayerConfig("bconv", 32, 64, 1, 1, 1, 8), LayerConfig("bconv", 128, 128, 3, 1, 1, 8))


def noise_floor(runner, target, timing, repeats: int = 6, workdir: Path | None = None) -> dict:
    """How well a device agrees with itself under `timing` (a `TimingSettings`): each probe kernel measured
    `repeats` times in turn, each measurement `timing.rounds` visits (probes alternating) as a campaign
    takes it; the noise floor is the median relative deviation of a measurement from the probe's median,
    for the protocol's estimate and for the raw median, and `speed_range` the ratio of the 90th to the 10th
    percentile of the reference's burst times (how much the machine's speed moved)."""
    from nasbnn_hw.deploy.kernels import build_layer
    from nasbnn_hw.utils import WorkDir
    proto = timing.protocol()
    with WorkDir("nasbnn-noise-", dir=workdir) as d:
        ref = reference_library(Path(d), target)
        probes = []
        for cfg in NOISE_PROBES:
            lay = build_layer(cfg, target, batch=1)
            probes.append((lay.export(Path(d) / f"{cfg.key()}.so"), lay.args))
        baseline = proto.calibrate_reference(runner, ref, bursts=5)
        runs = []    # runs[repeat][probe]: that measurement's visits
        for _ in range(repeats):
            visits = [[proto.measure(runner, lib, args, ref) for lib, args in probes] for _ in range(timing.rounds)]
            runs.append([[v[j] for v in visits] for j in range(len(probes))])

    def value(visits, protocol: bool) -> float:
        if protocol:
            return pooled_estimate([m.normalised_samples(baseline) for m in visits])
        return statistics.median(x for m in visits for x in m.samples)

    def spread(protocol: bool):
        devs = []
        for j in range(len(probes)):
            vals = [value(r[j], protocol) for r in runs]
            mid = statistics.median(vals)
            devs += [abs(v / mid - 1) for v in vals]
        return statistics.median(devs)
    refs = [x for r in runs for vs in r for m in vs for x in m.reference_s]
    lo, hi = np.percentile(refs, [10, 90])
    return {"protocol": "reference" if timing.reference else "median", "bursts": proto.bursts,
            "repeat": proto.repeat, "rounds": timing.rounds, "noise": spread(timing.reference),
            "noise_raw": spread(False), "noise_reference": spread(True),
            "speed_range": float(hi / lo), "reference_us": baseline * 1e6}


NOISE_SWAP = 0.10    # a second measurement may not order two subnets this far apart the other way ...
NOISE_WITHIN = 0.8   # ... and must put at least this share of the subnets within +-10 % of the first
NOISE_TAU = 0.8      # records without a largest swap (older stores): the Kendall tau below which it is noisy


def self_disagreement(kendall_tau: float, largest_swap: float | None, acc10: float, subnets: int) -> str | None:
    """Why two measurements of the same `subnets` subnets show the device noise-dominated, in words; None
    when they agree. Two rules. Order: the largest swap (`cost_models.metrics.largest_swap`) is at most
    NOISE_SWAP: the second measurement may swap subnets closer together than the device's noise (Kendall tau
    counts those too, so it falls with how closely the sample's latencies lie, not only with the noise),
    never two more than NOISE_SWAP apart; without a largest swap (recorded by an older version), Kendall tau
    >= NOISE_TAU. Value: at least NOISE_WITHIN of the subnets within +-10 % (`acc10`), since a budget is in
    seconds: a device whose second measurement is 20 % slower throughout keeps every order and moves every
    budget decision."""
    why = []
    if largest_swap is None and kendall_tau < NOISE_TAU:
        why.append(f"Kendall tau {kendall_tau:.2f} < {NOISE_TAU}")
    elif largest_swap is not None and largest_swap > NOISE_SWAP:
        why.append(f"a pair {100 * largest_swap:.0f} % apart ordered the other way (at most "
                   f"{100 * NOISE_SWAP:.0f} % allowed)")
    if acc10 < NOISE_WITHIN:
        why.append(f"{100 * acc10:.0f} % of them within ±10 % of the first (at least {100 * NOISE_WITHIN:.0f} % "
                   f"needed)")
    if not why:
        return None
    return f"two measurements of the same {subnets} subnets: {'; '.join(why)}"


def noise_warning(store, device: str) -> str | None:
    """A one-line warning when the latest recorded self-agreement of `device` in `store` (a path or a
    MeasurementStore) shows it noise-dominated (`self_disagreement`); None when it is fine or was never
    measured."""
    from nasbnn_hw.profiling.store import MeasurementStore
    if store is None:
        return None
    if isinstance(store, MeasurementStore):
        rec = store.agreement(device)
    else:
        if not Path(store).exists():
            return None
        with MeasurementStore(store, readonly=True) as st:
            rec = st.agreement(device)
    why = None if rec is None else self_disagreement(rec["kendall_tau"], rec["largest_swap"], rec["acc10"],
                                                     rec["subnets"])
    if why is None:
        return None
    return (f"warning: device '{device}' does not agree with itself ({why}): its latency is noise-dominated; "
            f"see `nasbnn-hw devices check {device} --noise`")
