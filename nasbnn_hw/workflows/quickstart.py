"""The main job: train a small supernet, profile this CPU with the TVM binary kernels, fit a latency
predictor, search under a latency budget, export the chosen subnet (ONNX, TVM and a bundle for a board, each
verified against PyTorch) and write a report. Every stage reuses what an earlier run already produced."""
from __future__ import annotations

import json
import math
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class QuickstartConfig:
    out: Path = Path("runs/quickstart")
    data: str | None = None
    space: str = "small16"
    epochs: int = 3
    steps_per_epoch: int = 100
    batch_size: int = 128
    subnets: int = 24
    threads: int = 2
    budget_fraction: float = 0.5
    device: str = "local"          # the device profile whose latency is measured
    torch_device: str = "cpu"      # where the supernet trains and the search evaluates: auto | cpu | cuda[:N]
    population: int = 32
    generations: int = 4
    seed: int = 0


BUDGET_QUANTILES = (0.25, 0.5, 0.75)  # the three measured latency budgets
BUDGET_SLACK = 0.03                   # "within budget" allows the measurement's own spread
PICK_MEASUREMENTS = 3                 # each pick measured this many times, independently; the median is judged


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU model unknown"


def _best_under(result, budget: float):
    """The most accurate Pareto subnet under `budget`, else the cheapest one (a budget below the front)."""
    from searchers.errors import SearchError
    try:
        return result.best(budget)
    except SearchError:
        return min(result.pareto, key=lambda c: c.costs[result.cost_model])


def _measured(ts: list[float]) -> dict:
    """Report fields of a subnet measured several times (seconds, sorted): the median and every run, in ms."""
    return {"measured_ms": statistics.median(ts) * 1e3, "measured_runs_ms": [t * 1e3 for t in ts]}


def _latencies(v, n: int) -> bool:
    """Whether `v` is a list of `n` finite positive numbers (seconds)."""
    return isinstance(v, list) and len(v) == n and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in v)


def _plot_duel(duel: list[dict], path: Path, device: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=100)
    budgets = sorted({d["budget_ms"] for d in duel})
    for who, mk, col, dy in (("latency-aware", "o", "tab:blue", 6), ("OPs-aware", "s", "tab:orange", -12)):
        pts = [d for d in duel if d["search"] == who]
        ax.scatter([d["measured_ms"] for d in pts], [d["test_top1"] for d in pts], marker=mk, color=col, label=who,
                   zorder=3)
        runs = [d.get("measured_runs_ms") or [d["measured_ms"]] for d in pts]   # the range of its measurements
        ax.errorbar([d["measured_ms"] for d in pts], [d["test_top1"] for d in pts], fmt="none", ecolor=col, lw=0.8,
                    xerr=[[d["measured_ms"] - min(r) for d, r in zip(pts, runs)],
                          [max(r) - d["measured_ms"] for d, r in zip(pts, runs)]], zorder=2)
        for d in pts:  # which budget each pick answers (several budgets may share a pick)
            ax.annotate(f"b{budgets.index(d['budget_ms']) + 1}" + ("" if d["within_budget"] else " over"),
                        (d["measured_ms"], d["test_top1"]), textcoords="offset points",
                        xytext=(4, dy + 8 * budgets.index(d["budget_ms"]) * (1 if dy > 0 else -1)), fontsize=7,
                        color=col)
    for i, b in enumerate(budgets):
        ax.axvline(b, color="grey", ls="--", lw=0.8)
        ax.text(b, ax.get_ylim()[1], f" b{i + 1}", fontsize=7, color="grey", va="top")
    ax.set_xlabel(f"measured latency on {device} (ms, median and range of its measurements); dashed: budgets")
    ax.set_ylabel("test top-1 %")
    ax.set_title("picks at three measured latency budgets", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _say(msg: str) -> None:
    print(f"[quickstart] {msg}", flush=True)


class _Stages:
    def __init__(self):
        self.times: dict[str, float] = {}

    def run(self, name: str, fn):
        _say(f"{name} ...")
        t = time.time()
        out = fn()
        self.times[name] = time.time() - t
        _say(f"{name} done in {self.times[name]:.1f} s")
        return out


def _plot_training(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    ax[0].plot(ep, [h["teacher_loss"] for h in history], "o-", label="teacher CE (largest, FP weights)")
    ax[0].plot(ep, [h["kd_loss"] for h in history], "o-", label="students KD (smallest + random)")
    ax[0].set_xlabel("epoch"), ax[0].set_ylabel("loss"), ax[0].legend(fontsize=7)
    ax[1].plot(ep, [h["teacher_acc"] for h in history], "o-", label="teacher train top-1")
    for key, lab in (("val_largest", "largest (val, BN recal.)"), ("val_smallest", "smallest (val, BN recal.)")):
        if all(key in h for h in history):
            ax[1].plot(ep, [h[key] for h in history], "o-", label=lab)
    ax[1].set_xlabel("epoch"), ax[1].set_ylabel("top-1 %"), ax[1].legend(fontsize=7)
    fig.suptitle("supernet training (Bi-Teacher)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_quickstart(cfg: QuickstartConfig) -> str:
    from cost_models.compare import compare_measured
    from cost_models.learned import fit_predictor

    from nasbnn_hw.nn.checkpoint import load_supernet
    from nasbnn_hw.workflows.search import run_search_with_checkpoint
    from nasbnn_hw.data.sets import default_source, load_splits
    from nasbnn_hw.deploy.bundle import Preprocess, run_bundle, write_bundle
    from nasbnn_hw.deploy.onnx_net import check_agreement, export_onnx
    from nasbnn_hw.deploy.tvm_net import compile_subnet
    from nasbnn_hw.train.evaluate import accuracy, calibration_batches, recalibrate_bn
    from nasbnn_hw.core.layers import count_ops
    from nasbnn_hw.profiling.devices import open_device, timing_for
    from nasbnn_hw.profiling.timing import NOISE_SWAP, NOISE_WITHIN, self_disagreement
    from nasbnn_hw.profiling.profiler import (measure_again, profile_layers, profile_subnets, subnet_key,
                                               uses_subnet_reference)
    from nasbnn_hw.core.sampling import largest, smallest
    from nasbnn_hw.core.space import get_space
    from nasbnn_hw.profiling.store import MeasurementStore
    from nasbnn_hw.profiling.tuning import ScheduleBook
    from nasbnn_hw.nn.subnet_io import recalibrated_subnet
    from nasbnn_hw.train.trainer import SupernetTrainer, TrainConfig
    from nasbnn_hw.utils import atomic_write_text

    t_start = time.time()
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    report_dir = out / "report"
    report_dir.mkdir(exist_ok=True)
    stages = _Stages()
    space = get_space(cfg.space)
    if cfg.data:
        source, why = cfg.data, cfg.data
    else:
        source, why = default_source()
    _say(f"data: {why}; space: {space.name} ({space.resolution}x{space.resolution}); output: {out}")
    splits = load_splits(source, space.resolution, space.in_channels)

    # 1. train ------------------------------------------------------------------------------------
    calib = calibration_batches(splits.train, 4, 256)

    def val_at_epoch_end(tr):
        res = {}
        for name, arch in (("val_largest", largest(space)), ("val_smallest", smallest(space))):
            recalibrate_bn(tr.net, arch, calib)
            res[name] = accuracy(tr.net, splits.val.subset(range(min(2000, len(splits.val)))), arch=arch)["top1"]
        return res

    def train():
        tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, max_steps_per_epoch=cfg.steps_per_epoch,
                           seed=cfg.seed, device=cfg.torch_device)
        tr = SupernetTrainer(space, splits, tcfg, out / "supernet",
                             data_config={"source": source, "val_fraction": 0.1, "limit_train": None, "split_seed": 0})
        if tr.resume():
            _say(f"  resuming the supernet at epoch {tr.epoch}/{cfg.epochs}")
        tr.fit(on_epoch_end=val_at_epoch_end)
        return tr
    trainer = stages.run("train supernet", train)
    ckpt = trainer.checkpoint_path

    # 2. profile ------------------------------------------------------------------------------------
    store_path = out / "measurements.db"
    device, runner, target, profile = open_device(cfg.device)
    timing = timing_for(profile)
    with MeasurementStore(store_path) as store:
        stages.run(f"profile layers (TVM binary kernels, {device})",
                   lambda: profile_layers(space, device, store, runner, target, timing=timing))
        stages.run(f"profile {cfg.subnets} whole subnets",
                   lambda: profile_subnets(space, cfg.subnets, device, store, runner, target, seed=cfg.seed,
                                           timing=timing))

    def measured(archs) -> list[float]:
        """Seconds on the device for `archs`, measuring (and storing) those not yet in the store."""
        with MeasurementStore(store_path) as store:
            profile_subnets(space, 0, device, store, runner, target, archs=list(archs), timing=timing,
                            progress=False)
            got = {m.key: m.median_s for m in store.query(device=device, kind="subnet")}
            book = ScheduleBook.load(store, device, target)
        return [got[subnet_key(a, space, book)] for a in archs]

    # 3. fit ------------------------------------------------------------------------------------------
    pred_path = out / "predictor.json"

    def fit():
        if pred_path.exists():  # the search state and its latency budget are tied to this predictor
            _say(f"  reusing {pred_path}")
            return
        fit_predictor(str(store_path), device).save(pred_path)
    stages.run("fit latency predictor", fit)

    # 3b. the device's self-agreement, before anything relies on its latency ---------------------------
    report_n = max(5, cfg.subnets // 3)

    def report_costs():
        return compare_measured(str(store_path), device, report_dir / "costs", n_subnets=report_n, space=space.name,
                                remeasure=lambda sp, archs: measure_again(sp, archs, device, runner, target,
                                                                          timing=timing, baseline_from=store_path,
                                                                          fresh_process=True),
                                n_remeasure=report_n, log=lambda m: None)
    metrics = stages.run("cost models vs held-out subnets, measured twice", report_costs)
    again = metrics.pop("repeatability")
    rep = again["remeasured"]
    noisy = self_disagreement(rep["kendall_tau"], rep["largest_swap"], rep["acc10"], again["n"])
    if noisy:
        _say(f"WARNING: this device does not agree with itself ({noisy}): latency here is noise-dominated")

    # 4. search: latency-aware and OPs-aware, at three measured latency budgets -----------------------
    from cost_models.metrics import LARGEST_SWAP_NOTE, calibrate_linear
    from cost_models.registry import get_cost_model
    lat_model = get_cost_model(f"latency@{device}", space, predictor=str(pred_path), store=str(store_path))
    ops_model = get_cost_model("ops", space)
    from nasbnn_hw.profiling.profiler import random_subnets
    prof_archs = random_subnets(space, cfg.subnets, cfg.seed)   # the profiled ones, as profile_subnets drew them
    prof_lat = measured(prof_archs)
    slope, icpt = calibrate_linear(list(ops_model.costs(prof_archs)), prof_lat)
    budgets = sorted(float(b) for b in np.quantile(prof_lat, BUDGET_QUANTILES))
    budget_s = budgets[1]
    constraint = f"latency@{device} <= {budget_s * 1e3:.4f}ms"
    _say(f"latency budgets (quantiles {BUDGET_QUANTILES} of the profiled subnets' measured latency): "
         + ", ".join(f"{b * 1e3:.4f} ms" for b in budgets) + f"; OPs user's line: latency = {slope:.3e} s/OP x OPs "
         f"+ {icpt * 1e3:.4f} ms")
    params = {"population_size": cfg.population, "generations": cfg.generations,
              "mutations": cfg.population // 2, "crossovers": cfg.population // 2}
    result, plots, _ = stages.run("evolutionary search, latency-aware", lambda: run_search_with_checkpoint(
        ckpt, f"latency@{device}", [f"latency@{device} <= {budgets[-1] * 1e3:.4f}ms"], out / "search",
        store=str(store_path), predictor=str(pred_path), val_limit=2000, searcher_params=params, seed=cfg.seed,
        device=cfg.torch_device))
    ops_budgets = [max(0.0, (b - icpt) / slope) for b in budgets]
    ops_result, _, _ = stages.run("evolutionary search, OPs-aware", lambda: run_search_with_checkpoint(
        ckpt, "ops", [f"ops <= {ops_budgets[-1]:.6g}"], out / "search_ops", val_limit=2000, searcher_params=params,
        seed=cfg.seed, device=cfg.torch_device))
    chosen = _best_under(result, budget_s)

    # 5. export + verify + measure (on the CPU: ONNX and TVM take the CPU weights) -------------------
    sup = load_supernet(ckpt).supernet

    def export():
        sub = recalibrated_subnet(sup, chosen.arch, splits)
        x = splits.test.images[:8]
        with torch.no_grad():
            ref = sub(x).numpy()
        got_onnx = export_onnx(sub, x, out / "best.onnx")
        tvm_net = compile_subnet(sub, target="local", batch=x.shape[0],
                                 schedules=ScheduleBook.load(store_path, device, target))
        tvm_net.export(out / "best_tvm.so")
        got_tvm = tvm_net(x.numpy())
        # the bundle a board runs with only its C library, through its own runner process
        write_bundle(tvm_net, out / "bundle", preprocess=Preprocess.for_splits(splits, space.resolution,
                     space.in_channels), labels=splits.class_names, force=True)
        got_bundle = run_bundle(out / "bundle", list(x.numpy())).logits
        return {"onnx": check_agreement("onnx", got_onnx, ref, sub, x),
                "tvm": check_agreement("tvm", got_tvm, ref, sub, x),
                "bundle": check_agreement("bundle", got_bundle, ref, sub, x)}
    checks = stages.run("export chosen subnet (ONNX, TVM, bundle) and verify", export)

    rows, duel = [], []
    test_top1: dict = {}

    def top1(arch) -> float:
        if arch not in test_top1:
            recalibrate_bn(sup, arch, calibration_batches(splits.train, 10, 256))
            test_top1[arch] = accuracy(sup, splits.test, arch=arch)["top1"]
        return test_top1[arch]

    def measure_and_score():
        named = [("chosen", chosen.arch), ("largest", largest(space)), ("smallest", smallest(space))]
        picks = [{"latency-aware": _best_under(result, b), "OPs-aware": _best_under(ops_result, ob)}
                 for b, ob in zip(budgets, ops_budgets)]
        archs = list(dict.fromkeys([a for _, a in named] + [c.arch for p in picks for c in p.values()]))
        # a pick's verdict rests on its latency: its stored measurement and PICK_MEASUREMENTS - 1 independent
        # ones (fresh processes), the median kept; one measurement can sit in a phase of the host. The extra
        # ones are kept beside the store (keyed like it: arch and schedules) for a later run to reuse.
        first = measured(archs)
        book = ScheduleBook.load(store_path, device, target)
        keys = [subnet_key(a, space, book) for a in archs]
        kept_path = out / "pick_latency.json"
        try:    # a damaged or foreign file is measured afresh and replaced
            kept = json.loads(kept_path.read_text()) if kept_path.exists() else {}
        except (ValueError, UnicodeDecodeError):
            kept = {}
        kept = kept if isinstance(kept, dict) else {}
        todo = [i for i, k in enumerate(keys) if not _latencies(kept.get(k), PICK_MEASUREMENTS - 1)]
        if todo:
            again = [measure_again(space, [archs[i] for i in todo], device, runner, target, timing=timing,
                                   baseline_from=store_path, fresh_process=True) for _ in range(PICK_MEASUREMENTS - 1)]
            for j, i in enumerate(todo):
                kept[keys[i]] = [float(r[j]) for r in again]
            atomic_write_text(kept_path, json.dumps(kept, indent=1, sort_keys=True) + "\n")
        lat = {a: sorted([float(t), *kept[k]]) for a, t, k in zip(archs, first, keys)}
        for name, arch in named:
            rows.append({"subnet": name, "test_top1": top1(arch), **_measured(lat[arch]),
                         "predicted_ms": float(lat_model.cost(arch)) * 1e3, "ops_M": count_ops(arch, space).ops / 1e6,
                         "arch": arch.short()})
        for b, ob, pick in zip(budgets, ops_budgets, picks):
            limit = b * (1 + BUDGET_SLACK)
            for who, c in pick.items():
                used = f"{b * 1e3:.4f} ms (predicted)" if who == "latency-aware" else f"{ob / 1e6:.4f} M OPs"
                ts = lat[c.arch]
                duel.append({"budget_ms": b * 1e3, "search": who, "budget_used": used,
                             "test_top1": top1(c.arch), "val_top1": c.accuracy,
                             **_measured(ts), "within_budget": statistics.median(ts) <= limit,
                             "borderline": ts[0] <= limit < ts[-1],
                             "arch": c.arch.short(), "ops_M": count_ops(c.arch, space).ops / 1e6})
    stages.run(f"measure ({PICK_MEASUREMENTS}x) and test the picks (chosen, largest, smallest; both searches at 3 "
               "budgets)",
               measure_and_score)

    def random_subnets_top1():
        import random as _random

        from nasbnn_hw.core.sampling import sample_uniform
        rng, accs = _random.Random(cfg.seed + 1), []
        for _ in range(20):
            arch = sample_uniform(space, rng)
            recalibrate_bn(sup, arch, calib)
            accs.append(accuracy(sup, splits.test, arch=arch)["top1"])
        return {"n": len(accs), "mean": statistics.mean(accs), "std": statistics.stdev(accs)}
    random_top1 = stages.run("test 20 random subnets", random_subnets_top1)

    runner.close()

    # 6. report -------------------------------------------------------------------------------------
    _plot_training(trainer.history, report_dir / "training.png")
    _plot_duel(duel, report_dir / "latency_vs_ops.png", device)
    total = time.time() - t_start
    m = again["remeasured"]
    lines = [f"# nasbnn-hw quickstart: {space.name} on {source}", ""]
    if noisy:
        lines += [f"**Warning: the device `{device}` does not agree with itself** ({noisy}): its latencies are "
                  "noise-dominated, and so is every latency-based figure below. Check "
                  f"`nasbnn-hw devices check {device} --noise`, close other work, or raise `rounds`.", ""]
    lines += [f"Device: `{device}` ({platform.machine()}, {_cpu_model()}), "
              f"TVM-compiled bit-packed binary kernels, timing protocol: "
              f"{'reference kernel interleaved' if timing.reference else 'plain medians'}, {timing.rounds} round(s) "
              f"of {timing.bursts} x {timing.repeat} samples per item"
              f"{f' (up to {timing.round_limit(timing.rounds)} while the 95 % confidence interval of its kept value is wider than ±{100 * timing.precision:g} %)' if timing.precision else ''}"
              f"{', 20th percentile of the normalised samples kept' if timing.reference else ''}"
              f"{', whole subnets against a reference subnet of the space' if timing.reference and uses_subnet_reference(space, timing) else ''}. "
              f"Total wall time {total:.0f} s.", "",
              "## 1. Does the device agree with itself?", "",
              f"{again['n']} held-out subnets measured a second time, independently (compiled and timed again in a fresh process), "
              "against the first measurement:", "",
              "| | ±10% | Kendall tau | MAPE % | largest swap |", "|---|---|---|---|---|",
              f"| second measurement vs first | {100 * m['acc10']:.1f}% | {m['kendall_tau']:.3f} | {m['mape']:.2f} | "
              f"{100 * m['largest_swap']:.1f}% |", "",
              f"{LARGEST_SWAP_NOTE} A device is taken as agreeing with itself when its second measurement swaps no "
              f"two subnets more than {100 * NOISE_SWAP:.0f} % apart and puts at least {100 * NOISE_WITHIN:.0f} % of "
              "them within ±10 % of the first.", "",
              "![second measurement](costs/scatter_remeasured.png)",
              "", "## 2. Cost models on held-out subnets", "",
              f"Full report: [costs/report.md](costs/report.md); {next(iter(metrics.values()))['n']} held-out "
              "subnets, never used to fit.", "", "| model | ±10% | Kendall tau | MAPE % | largest swap |",
              "|---|---|---|---|---|"]
    lines += [f"| {k} | {100 * v['acc10']:.1f}% | {v['kendall_tau']:.3f} | {v['mape']:.2f} | "
              f"{100 * v['largest_swap']:.1f}% |" for k, v in metrics.items()]
    lines += ["", "OPs and FLOPs are scored after the best linear fit to seconds.", "",
              "## 3. Latency-aware vs OPs-aware search at measured latency budgets", "",
              f"Two evolutionary searches of the same supernet: one with the latency predictor as its cost, one "
              f"with OPs (NAS-BNN's axis). An OPs user turns a latency budget into an OPs budget with the best "
              f"linear fit of OPs to the measured latency of the {len(prof_lat)} profiled subnets (latency = "
              f"{slope * 1e9:.3f} ns/OP x OPs + {icpt * 1e3:.4f} ms). Budgets: the {BUDGET_QUANTILES} quantiles of "
              "those measured latencies. Every pick is then measured on the device and tested on the test split.",
              "", "| budget ms | search | budget used | test top-1 % | measured ms (range) | within budget | OPs (M) | "
              "arch |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {d['budget_ms']:.4f} | {d['search']} | {d['budget_used']} | {d['test_top1']:.2f} | "
              f"{d['measured_ms']:.4f} ({min(d['measured_runs_ms']):.4f}-{max(d['measured_runs_ms']):.4f}) | "
              f"{'yes' if d['within_budget'] else 'no'}{' (borderline)' if d['borderline'] else ''} | "
              f"{d['ops_M']:.4f} | `{d['arch']}` |" for d in duel]
    lines += ["", f"'measured ms': the median of {PICK_MEASUREMENTS} independent measurements (the stored one and "
              f"{PICK_MEASUREMENTS - 1} more, each compiled and timed in a fresh process), their range in brackets. "
              f"'within budget': that median at most the budget (+{100 * BUDGET_SLACK:.0f} %, the measurement's own "
              "spread); 'borderline': the measurements fall on both sides of it.", "",
              "![latency-aware vs OPs-aware](latency_vs_ops.png)", "",
              "## Stages", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in stages.times.items()]
    lines += ["", f"## Chosen subnet under `{constraint}`", "",
              "| subnet | test top-1 % | measured latency ms (range) | predicted ms | OPs (M) | arch |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['subnet']} | {r['test_top1']:.2f} | {r['measured_ms']:.4f} ({min(r['measured_runs_ms']):.4f}-"
              f"{max(r['measured_runs_ms']):.4f}) | {r['predicted_ms']:.4f} | {r['ops_M']:.4f} | `{r['arch']}` |"
              for r in rows]
    lines += ["", f"20 random subnets (uniform under ND): mean test top-1 {random_top1['mean']:.2f} % "
              f"(std {random_top1['std']:.2f}).", ""]
    lines += ["", "Exports verified against PyTorch on 8 test images: " + ", ".join(
        f"{k}: max rel err {v['max_rel_err']:.1e}, same top-1 {v['same_top1']}" for k, v in checks.items()),
        f"(`{out / 'best.onnx'}`, `{out / 'best_tvm.so'}`, `{out / 'bundle'}`: run it with `nasbnn-hw run "
        f"--bundle {out / 'bundle'} --input IMAGE.pgm`, or copy it to a board).", "",
        "## Search", "", f"{len(result.evaluated)} subnets evaluated, {len(result.pareto)} on the Pareto set.", ""]
    lines += [f"![{p.stem}]({Path('..') / 'search' / p.name})" for p in plots]
    lines += ["", "## Training", "", "![training](training.png)", ""]
    atomic_write_text(report_dir / "report.md", "\n".join(lines) + "\n")
    atomic_write_text(report_dir / "summary.json", json.dumps(
        {"stages_s": stages.times, "total_s": total, "subnets": rows, "constraint": constraint,
         "exports": checks, "cost_models": metrics, "repeatability": again, "latency_vs_ops": duel,
         "ops_fit": {"slope_s_per_op": slope, "intercept_s": icpt}, "budgets_s": budgets,
         "random_subnets_top1": random_top1}, indent=1) + "\n")
    return str(report_dir / "report.md")
