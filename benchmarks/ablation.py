"""Ablation of the three training strategies at CPU scale (the paper's Fig. 3 experiment).

Trains the supernet four times with equal budgets — all strategies on, and each of Weight Normalization,
Bi-Transformation and Bi-Teacher off — then reports the mean (and std) top-1 of the same 50 random
subnets, each after BN recalibration, on the test split. Long: run it in the background.

    python benchmarks/ablation.py --space small16 --data fashion-mnist --epochs 4 --steps 200 --out runs/ablation
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from nasbnn_hw import get_space, largest, sample_uniform, smallest
from nasbnn_hw.data.sets import load_splits
from nasbnn_hw.train.evaluate import accuracy, calibration_batches, recalibrate_bn
from nasbnn_hw.train.trainer import SupernetTrainer, TrainConfig

VARIANTS = {"all strategies": {}, "no weight norm": {"weight_norm": False},
            "no bi-transformation": {"bi_transformation": False}, "no bi-teacher": {"bi_teacher": False}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="small16")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200, help="steps per epoch")
    ap.add_argument("--subnets", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/ablation")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    space = get_space(args.space)
    splits = load_splits(args.data, space.resolution, space.in_channels)
    rng = random.Random(123)
    archs = [sample_uniform(space, rng) for _ in range(args.subnets)]
    calib = calibration_batches(splits.train, 4, 256)
    results = {}
    for name, kw in VARIANTS.items():
        t = time.time()
        cfg = TrainConfig(epochs=args.epochs, max_steps_per_epoch=args.steps, seed=0, **kw)
        tr = SupernetTrainer(space, splits, cfg, Path(args.out) / name.replace(" ", "_"), progress=False)
        tr.resume()
        tr.fit()
        accs = []
        for a in archs:
            recalibrate_bn(tr.net, a, calib)
            accs.append(accuracy(tr.net, splits.test, arch=a)["top1"])
        ends = {}
        for lab, a in (("largest", largest(space)), ("smallest", smallest(space))):
            recalibrate_bn(tr.net, a, calib)
            ends[lab] = accuracy(tr.net, splits.test, arch=a)["top1"]
        results[name] = {"mean": statistics.mean(accs), "std": statistics.stdev(accs), **ends,
                         "train_s": time.time() - t}
        print(f"{name:22s} mean top-1 of {len(archs)} random subnets {results[name]['mean']:6.2f} "
              f"± {results[name]['std']:5.2f}   largest {ends['largest']:6.2f}   smallest {ends['smallest']:6.2f}"
              f"   ({results[name]['train_s']:.0f} s)", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "ablation.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
