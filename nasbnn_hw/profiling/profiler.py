"""The profiler: compile every layer a space can produce (and whole random subnets), time each on a
device through a runner, and store the results.

    with MeasurementStore("lat.db") as store:
        profile_layers(get_space("small"), "local", store, LocalRunner(), target="local")
        profile_subnets(get_space("small"), 20, "local", store, LocalRunner(), target="local")

Batch size 1 (the store's keys carry no batch size). Resumable: an item is skipped when the store already
has it for (device, target, TVM version), and each result is written in its own transaction right after it
is measured, so a run killed at any moment loses at most the item in flight and never duplicates one.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from nasbnn_hw.core.arch import Arch
from nasbnn_hw.errors import NasBnnError
from nasbnn_hw.core.layers import LayerConfig, arch_layers
from nasbnn_hw.core.sampling import sample_uniform
from nasbnn_hw.core.space import SearchSpace, get_space
from nasbnn_hw.profiling.store import Measurement, MeasurementStore
from nasbnn_hw.utils import WorkDir

__all__ = ["enumerate_layers", "random_subnets", "profile_layers", "profile_subnets", "ProfileReport",
           "TimingSettings", "ProfileError"]

log = logging.getLogger(__name__)


class ProfileError(NasBnnError):
    """Bad profiler input (space, count, settings)."""


# --------------------------------------------------------------------------------------------------
# What to measure

def _next_width(choices: tuple[int, ...], at_least: int) -> int | None:
    ok = [c for c in choices if c >= at_least]
    return min(ok) if ok else None


def _completable(space: SearchSpace, stage: int, width: int) -> bool:
    """Whether a block of `stage` with output `width` can be followed by a non-decreasing completion."""
    w = width
    for st in space.stages[stage + 1:]:
        w = _next_width(st.channels, w)
        if w is None:
            return False
    return True


def enumerate_layers(space: SearchSpace) -> list[LayerConfig]:
    """Every distinct `LayerConfig` that some arch of `space` (under the ND constraint) contains."""
    space = get_space(space)
    res_in = space.stage_resolutions()
    stem = space.stages[0]
    widths = {c for c in stem.channels if _completable(space, 0, c)}
    out: set[LayerConfig] = {LayerConfig("stem", space.in_channels, c, k, 1, stem.stride, space.resolution)
                             for c in widths for k in stem.kernel}
    for si in range(1, len(space.stages)):
        st, res = space.stages[si], res_in[si]
        # first block: stride of the stage at the stage's input resolution; later blocks: stride 1
        positions = [(st.stride, res)] + [(1, res // st.stride)] * (st.max_depth - 1)
        reach = set(widths)     # widths entering the current block
        after: set[int] = set()  # widths that can leave this stage (after any allowed depth)
        for bi, (s, r) in enumerate(positions):
            nxt = set()
            for c_in in reach:
                for c_out in st.channels:
                    if c_out < c_in or not _completable(space, si, c_out):
                        continue
                    nxt.add(c_out)
                    for k in st.kernel:
                        for g1 in st.groups1:
                            out.add(LayerConfig("bconv", c_in, c_in, k, g1, s, r))
                    for g2 in st.groups2:
                        out.add(LayerConfig("bconv", c_in, c_out, 1, g2, 1, r // s))
            reach = nxt
            if bi + 1 in st.depth:
                after |= nxt
        widths = after
    final_res = space.resolution
    for st in space.stages:
        final_res //= st.stride
    out |= {LayerConfig("head", c, space.num_classes, 1, 1, 1, final_res) for c in widths}
    return sorted(out)


def random_subnets(space: SearchSpace, n: int, seed: int = 0, max_tries: int = 1000) -> list[Arch]:
    """`n` distinct uniform ND archs, the same list for the same (space, n, seed)."""
    if n < 0:
        raise ProfileError(f"the number of subnets must be >= 0 (got {n})")
    rng, seen, out = random.Random(seed), set(), []
    tries = 0
    while len(out) < n and tries < max_tries + n:
        tries += 1
        a = sample_uniform(space, rng)
        if a not in seen:
            seen.add(a)
            out.append(a)
    return out


# --------------------------------------------------------------------------------------------------
# Timing

@dataclass(frozen=True)
class TimingSettings:
    """warmup calls, `repeat` timed samples, each the mean of `number` calls; number=0: choose `number`
    so that one sample lasts at least `min_sample_ms`. `bursts` > 1 takes `repeat` samples that many
    times; `reference` times the reference kernel before each burst and stores the latency in units of the
    device's reference time (`nasbnn_hw.profiling.timing`: the machine's current speed factors out).
    `rounds`: how many times a campaign visits each item (what `profile_layers`/`profile_subnets` do when
    not given `rounds`); with the reference the item keeps the protocol's pooled estimate of all rounds.
    `subnet_reference` (with `reference`): whole subnets are timed beside a fixed subnet of their own space
    (`subnet_reference_of`) instead of the reference layer, a reference with the items' working set.
    `precision` > 0 (with `reference`): after its `rounds`, an item gets further rounds, up to `max_rounds`
    (0: three times `rounds`), until the 95 % confidence interval of the kept percentile is within
    +-`precision` of it (`timing.quantile_ci`): a noisy phase buys more samples, a quiet one none."""
    warmup: int = 5
    repeat: int = 20
    number: int = 0
    min_sample_ms: float = 20.0
    bursts: int = 1
    reference: bool = False
    rounds: int = 1
    subnet_reference: bool = False
    precision: float = 0.0
    max_rounds: int = 0

    def __post_init__(self):
        if self.warmup < 0 or self.repeat < 1 or self.number < 0 or self.min_sample_ms <= 0 or self.bursts < 1 \
                or self.rounds < 1:
            raise ProfileError(f"timing settings warmup={self.warmup}, repeat={self.repeat}, number={self.number}, "
                               f"bursts={self.bursts}, min_sample_ms={self.min_sample_ms}, rounds={self.rounds} "
                               f"must be >= 0, >= 1, >= 0, >= 1, > 0, >= 1")
        if not 0 <= self.precision < 1 or self.max_rounds < 0:
            raise ProfileError(f"timing settings precision={self.precision} must be from 0 to 1 (a fraction, e.g. "
                               f"0.01), max_rounds={self.max_rounds} >= 0")
        if self.precision and not self.reference:
            raise ProfileError(f"timing settings precision={self.precision} needs the reference protocol "
                               "(reference = true): it bounds the kept percentile of the normalised samples")

    def round_limit(self, rounds: int) -> int:
        """The most rounds an item measured with `rounds` base rounds may take: `rounds`, or with `precision`
        `max_rounds` (0: 3 x rounds), never fewer than `rounds`."""
        if not self.precision:
            return rounds
        return max(rounds, self.max_rounds or 3 * rounds)

    def protocol(self):
        from nasbnn_hw.profiling.timing import Protocol
        return Protocol(bursts=self.bursts, repeat=self.repeat, warmup=self.warmup, number=self.number,
                        min_sample_ms=self.min_sample_ms)


class _TimeEvaluatorRunner:
    """Fallback local runner (TVM `time_evaluator` in this process) for when `nasbnn_hw.profiling.runners.local` is
    not available."""
    device = "local"

    def time_library(self, lib_path, args, *, warmup, repeat, number=1, return_outputs=False):
        import numpy as np
        import tvm

        from nasbnn_hw.profiling.runners.base import Timing
        lib = tvm.runtime.load_module(str(lib_path))
        dev = tvm.cpu(0)
        rng = np.random.default_rng(0)
        tensors = []
        for a in args:
            if a.is_output:
                tensors.append(tvm.runtime.empty(a.shape, a.dtype, dev))
            else:
                data = a.data if a.data is not None else rng.standard_normal(a.shape).astype(a.dtype)
                tensors.append(tvm.runtime.tensor(np.ascontiguousarray(data, a.dtype), dev))
        for _ in range(warmup):
            lib["main"](*tensors)
        r = lib.time_evaluator("main", dev, number=number, repeat=repeat)(*tensors)
        outs = tuple(t.numpy() for t, a in zip(tensors, args) if a.is_output) if return_outputs else None
        return Timing(tuple(float(s) for s in r.results), outs)

    def close(self):
        pass


def default_runner():
    """`LocalRunner` when the runners package has it, else an equivalent in-process timer."""
    try:
        from nasbnn_hw.profiling.runners.local import LocalRunner
    except ImportError:
        return _TimeEvaluatorRunner()
    return LocalRunner()


class _Clock:
    """Times items under one run's settings: the protocol, and with `reference` the reference kernel
    (built once for the target) and the device's baseline (calibrated once and kept in the store)."""

    def __init__(self, runner, timing: TimingSettings, store: MeasurementStore, device: str, spec, version: str,
                 tmp: Path, reference: tuple[str, Callable] | None = None):
        """`reference`: (its key in the store, build(tmp) -> (library, args)) of a reference other than the
        reference layer (`timing.REFERENCE_LAYER`)."""
        from nasbnn_hw.profiling.timing import reference_key, reference_library
        self.runner, self.protocol, self.baseline, self.reference = runner, timing.protocol(), None, None
        if timing.reference:
            name, build = reference or (reference_key(spec), lambda t: reference_library(t, spec))
            self.reference = build(tmp)
            key = (device, spec.description(), version, name)
            self.baseline = store.reference_baseline(*key)
            if self.baseline is None:
                self.baseline = store.set_reference_baseline(
                    *key, self.protocol.calibrate_reference(runner, self.reference))
                log.info("reference %s on %s: %.2f us (kept in the store)", name, device, self.baseline * 1e6)

    def time(self, lib: Path, args) -> tuple[float, float, tuple[float, ...]]:
        """(median, iqr, samples) in seconds; in reference units times the baseline with a reference."""
        from nasbnn_hw.profiling.timing import PROTOCOL_ESTIMATOR, estimate
        m = self.protocol.measure(self.runner, lib, args, self.reference)
        if self.reference is None:
            samples = m.samples
            med = estimate(m, "median")
        else:
            samples = m.normalised_samples(self.baseline)
            med = estimate(m, PROTOCOL_ESTIMATOR, self.baseline)
        q = np.percentile(samples, [25, 75])
        return med, float(q[1] - q[0]), samples


# --------------------------------------------------------------------------------------------------
# Profiling loops

@dataclass
class ProfileReport:
    measured: list[str] = field(default_factory=list)   # one key per stored measurement (a key per round)
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        items = len(set(self.measured))
        s = f"{items} measured" + (f" ({len(self.measured)} measurements)" if len(self.measured) != items else "")
        s += f", {self.skipped} already stored"
        return s + (f", {len(self.failed)} failed" if self.failed else "")


def _tvm_version() -> str:
    import tvm
    return str(tvm.__version__)


def _progress(total: int, desc: str, enabled: bool):
    from nasbnn_hw.utils import progress_bar
    return progress_bar(total=total, desc=desc, unit="item", disable=not enabled)


def _device_level(e: Exception) -> bool:
    """Errors that concern the device, not the item (unreachable board, refused host key, bad key or
    remote setup): stop the run; everything measured so far is stored and the same command resumes later."""
    from nasbnn_hw.profiling.runners.errors import BoardUnavailable, DeviceSetupError
    return isinstance(e, (BoardUnavailable, DeviceSetupError))


def _failure(e: Exception) -> str:
    """One line for a failed item in a report: the error's last line (with its type unless it is ours)."""
    why = str(e).strip().splitlines()[-1] if str(e).strip() else ""
    return why if isinstance(e, NasBnnError) else f"{type(e).__name__}: {why}"


def _run(items: list[tuple[str, dict, Callable]], kind: str, device: str, store: MeasurementStore, runner, spec,
         timing: TimingSettings, progress: bool, workdir: Path | None, stop_on_error: bool,
         rounds: int | None = None, reference: tuple[str, Callable] | None = None) -> ProfileReport:
    """Measure each item until it has `rounds` (default: `timing.rounds`) measurements in the store, round
    by round (every item's round r before any item's round r + 1, so that rounds fall at different moments of
    a drifting device); with `timing.precision`, items whose kept value is not yet that precise take further
    rounds, up to `timing.round_limit(rounds)`.
    A library is built once per run and kept until its last round. Under the reference protocol `reference`
    (key, build) replaces the reference layer for new items; its key is kept in each item's config, and an
    item already stored keeps the reference of its first round (rounds against different references are
    never pooled; items stored before references were recorded used the reference layer)."""
    from nasbnn_hw.profiling.timing import LOW_QUANTILE, pooled_estimate, quantile_ci
    rounds = timing.rounds if rounds is None else rounds
    if not isinstance(rounds, int) or rounds < 1:
        raise ProfileError(f"rounds must be an integer >= 1 (got {rounds!r})")
    cap = timing.round_limit(rounds)
    version, target_key = _tvm_version(), spec.description()
    report = ProfileReport()
    done = {key: store.rounds(device, target_key, version, kind, key) for key, _, _ in items}

    def unfinished(key) -> bool:
        """Whether `key` takes another round: it has fewer than `rounds`, or fewer than `cap` and its kept
        value is not yet within +-`timing.precision` (95 % confidence)."""
        if done[key] < rounds:
            return True
        if done[key] >= cap:
            return False
        pooled = [x for r in store.round_samples(device, target_key, version, kind, key) for x in r]
        return quantile_ci(pooled, LOW_QUANTILE) > timing.precision

    todo = [it for it in items if unfinished(it[0])]
    report.skipped = len(items) - len(todo)
    if report.skipped:
        log.info("%d %s measurement(s) already stored for %s, skipped", report.skipped, kind, device)
    total = sum(max(1, rounds - done[key]) for key, _, _ in todo)
    built: dict[str, tuple] = {}
    ref_of: dict[str, str | None] = {}   # item key -> the reference key it is timed against (None: the layer)
    if timing.reference and todo:
        stored = {m.key: m.config for m in store.query(device=device, kind=kind, target=target_key)
                  if m.tvm_version == version}
        for key, config, _ in todo:
            ref_of[key] = stored[key].get("reference") if done[key] else (reference[0] if reference else None)
            if reference and ref_of[key] == reference[0]:
                config["reference"] = reference[0]
    clocks: dict[str | None, _Clock] = {}
    live = {key for key, _, _ in todo}
    with WorkDir("nasbnn-profile-", dir=workdir) as tmp, \
            _progress(total, f"{kind}s on {device}", progress) as bar:
        def clock_for(key):
            ref = ref_of.get(key)
            if ref not in clocks:
                other = reference if reference and ref == reference[0] else None
                if ref is not None and other is None:
                    raise ProfileError(f"{kind} {key[:60]} was measured against reference {ref!r}, which this "
                                       "run does not build; resume it with the same device profile and space")
                clocks[ref] = _Clock(runner, timing, store, device, spec, version, Path(tmp), other)
            return clocks[ref]
        for r in range(cap):
            for key, config, build in todo:
                if done[key] != r or key not in live:
                    continue
                label = key if kind == "layer" else f"#{len(set(report.measured)) + 1}"
                bar.set_postfix_str(label if cap == 1 else f"{label} round {r + 1}/{rounds if r < rounds else cap}",
                                    refresh=False)
                try:
                    if key not in built:
                        built[key] = build(Path(tmp))
                    lib_path, args = built[key]
                    med, iqr, samples = clock_for(key).time(lib_path, args)
                except Exception as e:  # noqa: BLE001 - one bad item must not end a long run; it is reported
                    if stop_on_error or _device_level(e):
                        raise
                    report.failed[key] = _failure(e)
                    log.warning("%s %s failed: %s", kind, key, report.failed[key])
                    bar.update(max(1, rounds - done[key]))
                    live.discard(key)
                    continue
                m = Measurement(device, target_key, version, kind, key, config, median_s=med,
                                iqr_s=iqr, repeats=len(samples), samples=tuple(samples), created=time.time())
                # counted and stored in one transaction: a second profiler on this store cannot overshoot
                n = store.add_round(m, limit=cap, pooled=pooled_estimate if timing.reference else None)
                done[key] = cap if n is None else n + 1
                if n is not None:
                    report.measured.append(key)
                bar.update(1)
                if not unfinished(key):
                    live.discard(key)
                    Path(built.pop(key)[0]).unlink(missing_ok=True)
                elif done[key] >= rounds:   # a further round beyond the base ones: the bar grows by one
                    bar.total += 1
                    bar.refresh()
    return report


def _book(schedules, store, device: str, spec):
    """The `ScheduleBook` a campaign builds with: the one given, else the device's tuned schedules in `store`."""
    from nasbnn_hw.profiling.tuning import ScheduleBook
    return schedules if schedules is not None else ScheduleBook.load(store, device, spec)


def profile_layers(space, device: str, store: MeasurementStore, runner=None, target="local", *,
                   timing: TimingSettings = TimingSettings(), layers: Iterable[LayerConfig] | None = None,
                   progress: bool = True, workdir: Path | None = None, stop_on_error: bool = False,
                   rounds: int | None = None, schedules=None) -> ProfileReport:
    """Measure every layer of `space` (or the given `layers`) on `device` and store each one; `rounds` > 1
    (default: `timing.rounds`) measures each layer that many times, round by round, and stores the median of
    the round medians, or under the reference protocol the pooled estimate of all rounds' samples
    (`nasbnn_hw.profiling.timing.pooled_estimate`).
    Layers are built with `schedules` (a `ScheduleBook`; default: the device's tuned schedules in `store`)."""
    from nasbnn_hw.deploy.kernels import build_layer, resolve_target
    space = get_space(space)
    spec = resolve_target(target)
    runner = runner or default_runner()
    cfgs = list(layers) if layers is not None else enumerate_layers(space)
    book = _book(schedules, store, device, spec)

    def _builder(cfg):
        def build(tmp: Path):
            lay = build_layer(cfg, spec, batch=1, schedule=book)
            return lay.export(tmp / f"{cfg.key()}.so"), lay.args
        return build

    items = [(book.layer_key(c), book.layer_config(c), _builder(c)) for c in cfgs]
    return _run(items, "layer", device, store, runner, spec, timing, progress, workdir, stop_on_error, rounds)


def subnet_key(arch: Arch, space=None, schedules=None) -> str:
    """The store key of a subnet measurement: its arch, plus its layers' schedules when they are not the
    legacy ones (`ScheduleBook.subnet_key`; needs `space`)."""
    if schedules is None or schedules.all_legacy:
        return arch.to_json()
    return schedules.subnet_key(arch, space)


def profile_subnets(space, n: int, device: str, store: MeasurementStore, runner=None, target="local", *,
                    seed: int = 0, archs: Iterable[Arch] | None = None, timing: TimingSettings = TimingSettings(),
                    progress: bool = True, workdir: Path | None = None,
                    stop_on_error: bool = False, rounds: int | None = None, schedules=None) -> ProfileReport:
    """Measure `n` random whole subnets of `space` (or the given `archs`), compiled with random weights;
    `rounds` and `schedules` as in `profile_layers`."""
    from nasbnn_hw.deploy.tvm_net import compile_random_subnet
    from nasbnn_hw.deploy.kernels import resolve_target
    space = get_space(space)
    spec = resolve_target(target)
    runner = runner or default_runner()
    chosen = list(archs) if archs is not None else random_subnets(space, n, seed)
    book = _book(schedules, store, device, spec)

    def _builder(arch, i):
        def build(tmp: Path):
            net = compile_random_subnet(arch, space, spec, batch=1, seed=i, schedules=book)
            return net.export(tmp / f"subnet{i}.so"), net.arg_specs()
        return build

    def _config(arch):
        d = {"space": space.name, "resolution": space.resolution, "arch": arch.to_dict(), "space_def": space.to_dict()}
        sid = book.subnet_schedule_id(arch_layers(arch, space))
        return {**d, "schedule_id": sid} if sid else d

    items = [(subnet_key(a, space, book), _config(a), _builder(a, i)) for i, a in enumerate(chosen)]
    ref = subnet_reference_of(space, spec, book) if timing.reference and uses_subnet_reference(space, timing) \
        else None
    return _run(items, "subnet", device, store, runner, spec, timing, progress, workdir, stop_on_error, rounds,
                reference=ref)


REFERENCE_SUBNET_SEED = 9973
# Spaces whose largest subnet packs more binary weights than this (a core's L2 on common x86 and ARM cores)
# are timed against a reference subnet; smaller ones stay cache-resident like the reference layer, and there
# the reference subnet gained nothing (docs/measurements.md).
SUBNET_REFERENCE_MIN_BYTES = 1 << 20


def uses_subnet_reference(space, timing: TimingSettings) -> bool:
    """Whether whole subnets of `space` are timed against a reference subnet: `timing.subnet_reference` is on
    and the space's largest subnet holds more than SUBNET_REFERENCE_MIN_BYTES of packed binary weights."""
    from cost_models.analytic import layer_params
    from nasbnn_hw.core.sampling import largest
    if not timing.subnet_reference:
        return False
    space = get_space(space)
    bits = sum(layer_params(c) for c in arch_layers(largest(space), space) if c.kind == "bconv")
    return bits // 8 > SUBNET_REFERENCE_MIN_BYTES


def subnet_reference_of(space, spec, book) -> tuple[str, Callable]:
    """(store key, build(tmp) -> (library, args)) of the reference subnet of `space`: a fixed random subnet
    (seeded draw, seeded weights) built like the items. Timed beside whole subnets under
    `TimingSettings.subnet_reference`, it has their working set, so a neighbour on the shared cache that slows
    the items slows it too (docs/measurements.md). The key names the space (its definition and resolution),
    the arch and its schedules (and `schedule.kernel_revision`), so its baseline in the store means
    one compiled subnet."""
    import hashlib
    from nasbnn_hw.deploy.tvm_net import compile_random_subnet
    space = get_space(space)
    arch = random_subnets(space, 1, REFERENCE_SUBNET_SEED)[0]
    from nasbnn_hw.deploy.kernels.schedule import kernel_revision
    rev = kernel_revision(spec)
    ident = json.dumps([space.to_dict(), space.resolution, subnet_key(arch, space, book)] + ([rev] if rev else []),
                       sort_keys=True)
    key = f"subnet:{space.name}@{space.resolution}:{hashlib.sha256(ident.encode()).hexdigest()[:16]}"

    def build(tmp: Path):
        net = compile_random_subnet(arch, space, spec, batch=1, seed=REFERENCE_SUBNET_SEED, schedules=book)
        return net.export(Path(tmp) / "reference-subnet.so"), net.arg_specs()
    return key, build


def measure_again(space, archs: Sequence[Arch], device: str, runner=None, target="local", *,
                  timing: TimingSettings = TimingSettings(), progress: bool = False,
                  baseline_from: str | Path | None = None, schedules=None, fresh_process: bool = False) -> list[float]:
    """Compile and time `archs` once more on `device`, independently of any stored measurement (into a
    throw-away store): seconds, one per arch. For how well a device agrees with itself. Under the reference
    protocol the device's reference baseline comes from the store `baseline_from` when it has one (the
    same units as the first measurement), else it is calibrated afresh. The subnets are built with
    `schedules` (default: the device's tuned schedules in `baseline_from`). `fresh_process`: on this
    machine's CPU (no runner, or a `LocalRunner`), compile and time in a new Python process, which gets its
    own stack and heap placement as a later profile run or a deployed program does: a second measurement in
    the same process cannot see what depends on the process (docs/measurements.md)."""
    if fresh_process:
        from nasbnn_hw.profiling.runners.local import LocalRunner
        if runner is None or isinstance(runner, LocalRunner):
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
                return ex.submit(_measure_again_fresh, get_space(space), list(archs), device,
                                 runner.threads if runner is not None else 0, target, timing, progress, baseline_from,
                                 schedules).result()
    from nasbnn_hw.deploy.kernels import resolve_target
    from nasbnn_hw.profiling.timing import reference_key
    from nasbnn_hw.profiling.tuning import ScheduleBook
    space = get_space(space)
    book = schedules if schedules is not None else ScheduleBook.load(baseline_from, device, target)
    with WorkDir("nasbnn-again-") as d, MeasurementStore(Path(d) / "again.db") as st:
        if timing.reference and baseline_from is not None and Path(baseline_from).exists():
            spec = resolve_target(target)
            names = [reference_key(spec)] + ([subnet_reference_of(space, spec, book)[0]]
                                               if uses_subnet_reference(space, timing) else [])
            with MeasurementStore(baseline_from, readonly=True) as src:
                for name in names:
                    key = (device, spec.description(), _tvm_version(), name)
                    base = src.reference_baseline(*key)
                    if base is not None:
                        st.set_reference_baseline(*key, base)
        rep = profile_subnets(space, 0, device, st, runner, target, archs=archs, timing=timing, progress=progress,
                              schedules=book)
        got = {m.key: m.median_s for m in st.query(device=device, kind="subnet")}
    keys = [subnet_key(a, space, book) for a in archs]
    missing = [k for k in keys if k not in got]
    if missing:
        raise ProfileError(f"measuring {len(missing)} subnet(s) again on {device} failed: "
                           f"{next(iter(rep.failed.values()), 'no result')}")
    return [got[k] for k in keys]


def _measure_again_fresh(space, archs, device: str, threads: int, target, timing, progress, baseline_from,
                         schedules) -> list[float]:
    """`measure_again` in a child process, with a local runner of its own."""
    from nasbnn_hw.profiling.runners.local import LocalRunner
    with LocalRunner(device, threads=threads) as runner:
        return measure_again(space, archs, device, runner, target, timing=timing, progress=progress,
                             baseline_from=baseline_from, schedules=schedules)


def check_layers_cover(space: SearchSpace, archs: Iterable[Arch]) -> set[LayerConfig]:
    """Layers of `archs` missing from `enumerate_layers(space)` (empty when the enumeration is complete)."""
    known = set(enumerate_layers(space))
    return {l for a in archs for l in arch_layers(a, space)} - known
