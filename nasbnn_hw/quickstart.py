"""The main job: train a small supernet, profile this CPU with the TVM binary kernels, fit a latency
predictor, search under a latency budget, export the chosen subnet (ONNX and TVM, both verified against
PyTorch) and write a report. Every stage reuses what an earlier run already produced."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

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
    device: str = "local"
    population: int = 32
    generations: int = 4
    seed: int = 0


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

    from .checkpoint import load_supernet
    from .search import run_search_with_checkpoint
    from .data import default_source, load_splits
    from .deploy_onnx import check_agreement, export_onnx
    from .deploy_tvm import compile_subnet
    from .evaluate import accuracy, calibration_batches, recalibrate_bn
    from .layers import count_ops
    from .profiler import measure_again, profile_layers, profile_subnets, subnet_key
    from .sampling import largest, smallest
    from .space import get_space
    from .store import MeasurementStore
    from .subnet_io import recalibrated_subnet
    from .train import SupernetTrainer, TrainConfig
    from .utils import atomic_write_text

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
                           seed=cfg.seed)
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
    with MeasurementStore(store_path) as store:
        stages.run("profile layers (TVM binary kernels, local CPU)",
                   lambda: profile_layers(space, cfg.device, store))
        stages.run(f"profile {cfg.subnets} whole subnets",
                   lambda: profile_subnets(space, cfg.subnets, cfg.device, store, seed=cfg.seed))

    # 3. fit ------------------------------------------------------------------------------------------
    pred_path = out / "predictor.json"

    def fit():
        if pred_path.exists():  # the search state and its latency budget are tied to this predictor
            _say(f"  reusing {pred_path}")
            return
        fit_predictor(str(store_path), cfg.device).save(pred_path)
    stages.run("fit latency predictor", fit)

    # 4. search -------------------------------------------------------------------------------------
    from cost_models.registry import get_cost_model
    lat_model = get_cost_model(f"latency@{cfg.device}", space, predictor=str(pred_path), store=str(store_path))
    lo, hi = float(lat_model.cost(smallest(space))), float(lat_model.cost(largest(space)))
    budget_s = lo + cfg.budget_fraction * (hi - lo)
    constraint = f"latency@{cfg.device} <= {budget_s * 1e3:.4f}ms"
    _say(f"latency budget: {constraint} (smallest {lo * 1e3:.3f} ms, largest {hi * 1e3:.3f} ms predicted)")
    result, plots, _ = stages.run("evolutionary search", lambda: run_search_with_checkpoint(
        ckpt, f"latency@{cfg.device}", [constraint], out / "search", store=str(store_path), predictor=str(pred_path),
        val_limit=2000, searcher_params={"population_size": cfg.population, "generations": cfg.generations,
                                         "mutations": cfg.population // 2, "crossovers": cfg.population // 2},
        seed=cfg.seed))
    chosen = result.best(budget_s)

    # 5. export + verify + measure -----------------------------------------------------------------
    sup = load_supernet(ckpt).supernet

    def export():
        sub = recalibrated_subnet(sup, chosen.arch, splits)
        x = splits.test.images[:8]
        with torch.no_grad():
            ref = sub(x).numpy()
        got_onnx = export_onnx(sub, x, out / "best.onnx")
        tvm_net = compile_subnet(sub, target="local", batch=x.shape[0])
        tvm_net.export(out / "best_tvm.so")
        got_tvm = tvm_net(x.numpy())
        return {"onnx": check_agreement("onnx", got_onnx, ref), "tvm": check_agreement("tvm", got_tvm, ref)}
    checks = stages.run("export chosen subnet (ONNX + TVM) and verify", export)

    rows = []

    def measure_and_score():
        named = [("chosen", chosen.arch), ("largest", largest(space)), ("smallest", smallest(space))]
        with MeasurementStore(store_path) as store:
            profile_subnets(space, 0, cfg.device, store, archs=[a for _, a in named], progress=False)
            measured = {m.key: m.median_s for m in store.query(device=cfg.device, kind="subnet")}
        for name, arch in named:
            recalibrate_bn(sup, arch, calibration_batches(splits.train, 10, 256))
            acc = accuracy(sup, splits.test, arch=arch)
            rows.append({"subnet": name, "test_top1": acc["top1"], "measured_ms": measured[subnet_key(arch)] * 1e3,
                         "predicted_ms": float(lat_model.cost(arch)) * 1e3, "ops_M": count_ops(arch, space).ops / 1e6,
                         "arch": arch.short()})
    stages.run("measure and test chosen vs largest vs smallest", measure_and_score)

    def random_subnets_top1():
        import random as _random
        import statistics

        from .sampling import sample_uniform
        rng, accs = _random.Random(cfg.seed + 1), []
        for _ in range(20):
            arch = sample_uniform(space, rng)
            recalibrate_bn(sup, arch, calib)
            accs.append(accuracy(sup, splits.test, arch=arch)["top1"])
        return {"n": len(accs), "mean": statistics.mean(accs), "std": statistics.stdev(accs)}
    random_top1 = stages.run("test 20 random subnets", random_subnets_top1)

    # 6. report -------------------------------------------------------------------------------------
    def report():
        _plot_training(trainer.history, report_dir / "training.png")
        n = max(5, cfg.subnets // 3)
        return compare_measured(str(store_path), cfg.device, report_dir / "costs", n_subnets=n, space=space.name,
                                remeasure=lambda sp, archs: measure_again(sp, archs, cfg.device), n_remeasure=n,
                                log=lambda m: None)
    metrics = stages.run("report (held-out subnets measured again)", report)
    again = metrics.pop("repeatability")
    total = time.time() - t_start
    lines = [f"# nasbnn-hw quickstart: {space.name} on {source}", "",
             f"Device: `{cfg.device}` (this machine), TVM-compiled bit-packed binary kernels. Total wall time "
             f"{total:.0f} s.", "", "## Stages", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in stages.times.items()]
    lines += ["", f"## Chosen subnet under `{constraint}`", "",
              "| subnet | test top-1 % | measured latency ms | predicted ms | OPs (M) | arch |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['subnet']} | {r['test_top1']:.2f} | {r['measured_ms']:.4f} | {r['predicted_ms']:.4f} | "
              f"{r['ops_M']:.4f} | `{r['arch']}` |" for r in rows]
    lines += ["", f"20 random subnets (uniform under ND): mean test top-1 {random_top1['mean']:.2f} % "
              f"(std {random_top1['std']:.2f}).", ""]
    lines += ["", "Exports verified against PyTorch on 8 test images: " + ", ".join(
        f"{k}: max rel err {v['max_rel_err']:.1e}, same top-1 {v['same_top1']}" for k, v in checks.items()),
        f"(`{out / 'best.onnx'}`, `{out / 'best_tvm.so'}`).", "",
        "## Search", "", f"{len(result.evaluated)} subnets evaluated, {len(result.pareto)} on the Pareto set.", ""]
    lines += [f"![{p.stem}]({Path('..') / 'search' / p.name})" for p in plots]
    lines += ["", "## Cost models vs measured latency", "",
              f"Full report: [costs/report.md](costs/report.md); held-out subnets: "
              f"{next(iter(metrics.values()))['n']}.", "", "| model | ±10% | Kendall tau | MAPE % |", "|---|---|---|---|"]
    lines += [f"| {k} | {100 * m['acc10']:.1f}% | {m['kendall_tau']:.3f} | {m['mape']:.2f} |" for k, m in metrics.items()]
    m = again["remeasured"]
    lines += [f"| *second measurement* | {100 * m['acc10']:.1f}% | {m['kendall_tau']:.3f} | {m['mape']:.2f} |", "",
              "*Second measurement*: the same held-out subnets compiled and timed again, scored against the first "
              "measurement: how well this device agrees with itself. It carries the timing noise twice, a perfect "
              "model once; a model near or above it is at the limit the noise allows."]
    lines += ["", "## Training", "", "![training](training.png)", ""]
    atomic_write_text(report_dir / "report.md", "\n".join(lines) + "\n")
    atomic_write_text(report_dir / "summary.json", json.dumps(
        {"stages_s": stages.times, "total_s": total, "subnets": rows, "constraint": constraint,
         "exports": checks, "cost_models": metrics, "repeatability": again,
         "random_subnets_top1": random_top1}, indent=1) + "\n")
    return str(report_dir / "report.md")
