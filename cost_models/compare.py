"""Cost models against measured latency: the report behind `nasbnn-hw compare`."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from nasbnn_hw.utils import atomic_write_text


def format_metrics(name: str, m: dict) -> str:
    return (f"{name:9s} n={m['n']:4d}  ±10% {100 * m['acc10']:5.1f}%  ±5% {100 * m['acc5']:5.1f}%  "
            f"MAPE {m['mape']:6.2f}%  RMSE {1e3 * m['rmse']:.4f}ms  Kendall {m['kendall_tau']:.3f}  "
            f"Spearman {m['spearman']:.3f}  largest swap {100 * m['largest_swap']:.1f}%")


def compare_measured(store, device: str, out, *, n_subnets: int = 100, predictor=None, space: str | None = None,
                     n_estimators: int = 48, seed: int = 0, target: str | None = None,
                     tvm_version: str | None = None, remeasure=None, n_remeasure: int = 0, log=print) -> dict:
    """OPs, FLOPs, lookup table and predictor against `n_subnets` measured subnets of `device` read from
    `store`; writes the report (markdown, PNG scatter plots, CSV) into `out` and returns the metrics.

    `remeasure(space, archs) -> seconds` with `n_remeasure` > 0: measure that many of the compared subnets
    a second time, independently, and report how well the device agrees with itself beside the models on
    the same subnets: the measurement noise that bounds every cost model's score."""
    from cost_models.predictor import LatencyPredictor
    from cost_models.registry import get_cost_model
    from cost_models._store import load_device_measurements, subnet_space_arch
    from cost_models.errors import CostModelError, MissingMeasurementError
    from cost_models.learned import PredictorCostModel
    from cost_models.report import write_report
    from nasbnn_hw.core.layers import arch_layers

    data = load_device_measurements(store, device, target, tvm_version)
    subnets = [(m, sa) for m in data.subnets if (sa := subnet_space_arch(m)) is not None]
    if not subnets:
        raise CostModelError(f"no measured subnets for device {device!r} in {store}; measure some with "
                             f"`nasbnn-hw profile --device {device} --subnets N`")
    space_name = space or Counter(sa[0].name for _, sa in subnets).most_common(1)[0][0]
    subnets = [(m, sa) for m, sa in subnets if sa[0].name == space_name]
    if not subnets:
        raise CostModelError(f"no measured subnets of space {space_name!r} for device {device!r}")
    space = subnets[0][1][0]
    rng = random.Random(seed)
    idx = list(range(len(subnets)))
    rng.shuffle(idx)
    chosen = set(idx[:min(n_subnets, len(idx))])
    test = [subnets[i] for i in sorted(chosen)]
    train = [subnets[i] for i in range(len(subnets)) if i not in chosen]
    archs = [sa[1] for _, sa in test]
    preds: dict[str, list[float]] = {"ops": list(get_cost_model("ops", space).costs(archs)),
                                     "flops": list(get_cost_model("flops", space).costs(archs))}
    lut = get_cost_model(f"lut@{device}", space, store=store, overhead_s=0.0, target=data.target,
                         tvm_version=data.tvm_version)
    try:
        layer_sums = lut.costs(archs)
        gaps = [m.median_s - lut.cost(sa[1]) for m, sa in train if not lut.missing_layers(arch_layers(sa[1], space))]
        lut.overhead_s = sorted(gaps)[len(gaps) // 2] if gaps else 0.0
        preds["lut"] = list(layer_sums + lut.overhead_s)
    except MissingMeasurementError as e:
        log(f"lut: skipped ({e})")
    if predictor:
        p = LatencyPredictor.load(predictor, device=device)
        note = f"predictor {predictor}"
    else:
        from cost_models.learned import store_training_data
        layers, lat, _, _ = store_training_data(store, device, data.target, data.tvm_version)
        p = LatencyPredictor(n_estimators=n_estimators).fit(
            layers, lat, subnet_layer_lists=[arch_layers(sa[1], space) for _, sa in train],
            subnet_latencies_s=[m.median_s for m, _ in train], device=device, target=data.target,
            tvm_version=data.tvm_version)
        note = f"predictor fitted here on {len(layers)} layers and the {len(train)} subnets not compared"
    preds["predictor"] = list(PredictorCostModel(space, p, device).costs(archs))
    rows = [{"id": n, "arch": sa[1].to_dict()["stages"], "measured": m.median_s, **{k: float(v[n]) for k, v in preds.items()}}
            for n, (m, sa) in enumerate(test)]
    sections, again = [], None
    if remeasure is not None and n_remeasure > 0:
        again = _repeatability(remeasure, space, test[:n_remeasure], preds, device, Path(out))
        sections = again.pop("markdown")
    metrics = write_report(out, rows, title=f"Cost models vs measured latency on {device} "
                                                 f"({space.name}, {len(rows)} subnets)", sections=sections)
    log(f"{len(rows)} measured subnets of {space.name} on {device}; {note}; "
          f"LUT overhead from {len(train)} other subnets")
    for name, m in metrics.items():
        log(format_metrics(name, m) + ("" if m["unit"] == "s" else "  (linear fit to seconds)"))
    if again is not None:
        from nasbnn_hw.profiling.timing import noise_warning
        from cost_models._store import open_store
        log(format_metrics("measured again", again["remeasured"]) + "  (the device against itself)")
        st, own = open_store(store, readonly=False)
        try:
            st.add_agreement(device, again["n"], again["remeasured"]["kendall_tau"], again["remeasured"]["acc10"],
                            again["remeasured"]["largest_swap"])
            warn = noise_warning(st, device)
        finally:
            if own:
                st.close()
        if warn:
            log(warn)
        atomic_write_text(Path(out) / "repeatability.json", json.dumps(again, indent=1) + "\n")
        metrics["repeatability"] = again    # not a model: its own structure, see _repeatability
    return metrics


def _repeatability(remeasure, space, test, preds, device, out: Path) -> dict:
    """Measure `test` again; metrics of the second measurement and of the seconds-valued models against
    the first, on the same subnets, and the second against the first as a plot in `out`."""
    import numpy as np

    from cost_models.errors import CostModelError
    from cost_models.metrics import evaluate
    archs = [sa[1] for _, sa in test]
    first = np.array([m.median_s for m, _ in test])
    second = np.asarray(remeasure(space, archs), dtype=np.float64)
    if second.shape != first.shape or not np.all(second > 0):
        raise CostModelError(f"re-measuring {len(archs)} subnets on {device} gave {second.tolist()!r}")
    res = {"n": len(archs), "remeasured": evaluate(second, first),
           **{k: evaluate(np.asarray(v[:len(archs)]), first) for k, v in preds.items() if k in ("lut", "predictor")},
           "first_s": first.tolist(), "second_s": second.tolist()}
    md = ["## Measurement repeatability", "",
          f"{len(archs)} of these subnets measured a second time on {device}, independently (compiled and timed "
          "again), and scored against the first measurement beside the models on the same subnets. The second "
          "measurement carries the device's noise twice (once in each measurement), a perfect cost model once: "
          "a model that scores about as well as the second measurement, or better, is at the limit this "
          "device's noise allows; more or longer measurements, not a better model, would raise it.", "",
          "| against the first measurement | ±10% | ±5% | MAPE (%) | Kendall tau | Spearman | largest swap |",
          "|---|---|---|---|---|---|---|"]
    for name, m in res.items():
        if isinstance(m, dict):
            md.append(f"| {'second measurement' if name == 'remeasured' else name} | {100 * m['acc10']:.1f}% | "
                      f"{100 * m['acc5']:.1f}% | {m['mape']:.2f} | {m['kendall_tau']:.3f} | {m['spearman']:.3f} | "
                      f"{100 * m['largest_swap']:.1f}% |")
    md += ["", "(Measured: the first measurement.)", "", "![second measurement](scatter_remeasured.png)"]
    from cost_models.report import scatter
    out.mkdir(parents=True, exist_ok=True)
    scatter(out / "scatter_remeasured.png", first, second, res["remeasured"], "first measurement (ms)",
            "second measurement (ms)", "second measurement")
    res["markdown"] = md + [""]
    return res


