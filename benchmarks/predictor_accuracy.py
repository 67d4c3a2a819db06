"""Predictor and lookup-table accuracy on a simulated device, through the real CLI (`fit`, `compare`).

Fills a measurement store with every layer config of the space and `--subnets` whole subnets measured on
`cost_models.synthetic.SimulatedDevice`, then runs `nasbnn-hw fit` and `nasbnn-hw compare`.

    .venv/bin/python benchmarks/predictor_accuracy.py --space imagenet --subnets 200 --out /tmp/pred_report
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cost_models._layers import space_layer_configs  # noqa: E402
from cost_models.synthetic import SimulatedDevice  # noqa: E402
from nasbnn_hw.cli import main as cli  # noqa: E402
from nasbnn_hw.core.sampling import sample_uniform  # noqa: E402
from nasbnn_hw.core.space import get_space  # noqa: E402
from nasbnn_hw.profiling.store import MeasurementStore  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="imagenet")
    ap.add_argument("--subnets", type=int, default=200)
    ap.add_argument("--compare", type=int, default=100, help="subnets held out for the report")
    ap.add_argument("--noise", type=float, default=0.02)
    ap.add_argument("--out", default=None, help="report directory (default: a temporary one)")
    args = ap.parse_args(argv)
    space = get_space(args.space)
    dev = SimulatedDevice(name="sim", noise=args.noise)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "m.db"
        st = MeasurementStore(store)
        rng = random.Random(0)
        n = dev.fill_store(st, space_layer_configs(space), [(space, sample_uniform(space, rng))
                                                            for _ in range(args.subnets)])
        st.close()
        print(f"simulated store: {n} measurements ({args.space}, noise {args.noise})")
        cli(["fit", "--device", "sim", "--store", str(store), "--out", str(Path(tmp) / "p.json")])
        cli(["compare", "--device", "sim", "--store", str(store), "--subnets", str(args.compare),
             "--out", args.out or str(Path(tmp) / "report")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
