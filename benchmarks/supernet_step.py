"""Time one full Bi-Teacher training step (largest FP-weight teacher + smallest + 2 random students,
backward, optimizer step) on the CPU, against a straightforward implementation of the same step.

Two references, each timed in the same process:
* straightforward: each subnet weight computed the obvious way (full-width kernel transform before any
  input-channel crop, group crop by concatenating per-group slices, `scale * sign(w)` convolved);
* typical: that weight preparation plus the two idioms most public BNN code uses (Bi-Real Net, ReActNet):
  the ApproxSign gradient spliced in as a piecewise polynomial with the detach trick, and the per-filter
  scale applied to the conv output instead of the weight.
Run: `python benchmarks/supernet_step.py [--threads 2]`.

On a GPU: `python benchmarks/supernet_step.py --device cuda [--space imagenet --batch 256 --res 224]` times
this project's step only, in float32 and under each mixed-precision mode (bf16, fp16 + gradient scaler),
eager and fused (`--compile`), and prints images/s for each (CUDA synchronised around every step).
"""
from __future__ import annotations

import argparse
import random
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from nasbnn_hw import get_space
from nasbnn_hw.nn.binary_ops import DynamicBinaryConv2d, binary_weight_sign
from nasbnn_hw.train.trainer import SupernetTrainer, TrainConfig
from nasbnn_hw.data.sets import Splits, TensorData


def naive_weight(self, in_c, out_c, k, groups, binary=True):
    """The subnet weight computed the obvious way; binary: (sign weight, per-filter scale)."""
    w = self.weight[:out_c]
    cur = self.max_k
    for small in reversed(self.kernels):
        if small >= cur or cur <= k:
            continue
        s = (cur - small) // 2
        w = w[:, :, s:s + small, s:s + small]
        m = getattr(self, f"matrix_{cur}to{small}")
        w = F.linear(w.reshape(w.size(0), w.size(1), -1), m).reshape(w.size(0), w.size(1), small, small)
        cur = small
    sub_in = in_c // groups
    ratio = self.weight.size(1) // sub_in
    per = out_c // groups
    w = torch.cat([w[i * per:(i + 1) * per, (i % ratio) * sub_in:(i % ratio) * sub_in + sub_in]
                   for i in range(groups)], 0)
    if not binary:
        return w
    if self.bi_transformation and k == self.max_k:
        m = getattr(self, f"fp2bin_{k}")
        w = F.linear(w.reshape(w.size(0), w.size(1), -1), m).reshape(w.shape)
    if self.weight_norm:
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / w.std(dim=(1, 2, 3), keepdim=True)
    scale = w.abs().mean(dim=(1, 2, 3)).detach()
    return binary_weight_sign(w), scale


def naive_forward(self, x, out_c, k, groups, stride, binary=True):
    w = naive_weight(self, x.size(1), out_c, k, groups, binary)
    if binary:
        w = w[1].view(-1, 1, 1, 1) * w[0]
    return F.conv2d(x, w, None, stride, k // 2, 1, groups)


def bireal_sign(x):
    """The formulation of the ApproxSign gradient found in most public BNN code (Bi-Real Net, ReActNet):
    a piecewise polynomial whose derivative is 2 - 2|x| on |x| < 1, spliced in with the detach trick."""
    out_forward = torch.sign(x)
    mask1 = (x < -1).float()
    mask2 = (x < 0).float()
    mask3 = (x < 1).float()
    out1 = (-1) * mask1 + (x * x + 2 * x) * (1 - mask1)
    out2 = out1 * mask2 + (-x * x + 2 * x) * (1 - mask2)
    out3 = out2 * mask3 + 1 * (1 - mask3)
    return out_forward.detach() - out3.detach() + out3


def typical_forward(self, x, out_c, k, groups, stride, binary=True):
    """naive_forward's weight preparation, with the scale applied to the conv output (as that code does)."""
    w = naive_weight(self, x.size(1), out_c, k, groups, binary)
    if not binary:
        return F.conv2d(x, w, None, stride, k // 2, 1, groups)
    w, scale = w
    return F.conv2d(x, w, None, stride, k // 2, 1, groups) * scale.view(1, -1, 1, 1)


def time_steps(space, batch, res, steps, naive, typical=False, device="cpu", amp="", compile=False):
    space = space.with_resolution(res)
    n = batch * (steps + 1)
    data = TensorData(torch.randn(n, space.in_channels, res, res), torch.randint(0, space.num_classes, (n,)),
                      space.num_classes, "random")
    splits = Splits(data, data.subset(range(batch)), data.subset(range(batch)))
    import nasbnn_hw.nn.supernet as sn
    orig, orig_act = DynamicBinaryConv2d.forward, sn.binary_activation
    if typical:
        DynamicBinaryConv2d.forward = typical_forward
        sn.binary_activation = bireal_sign
    elif naive:
        DynamicBinaryConv2d.forward = naive_forward
    try:
        tr = SupernetTrainer(space, splits, TrainConfig(epochs=1, batch_size=batch, device=device, amp=amp,
                                                        compile=compile), "/tmp/nasbnn_bench", progress=False)
        sync = torch.cuda.synchronize if tr.device.type == "cuda" else (lambda: None)
        times = []
        for i in range(steps + 1):
            x, y = data.images[i * batch:(i + 1) * batch], data.labels[i * batch:(i + 1) * batch]
            sync()
            t = time.perf_counter()
            tr.train_step(x, y)
            sync()
            tr.global_step += 1
            times.append(time.perf_counter() - t)
    finally:
        DynamicBinaryConv2d.forward, sn.binary_activation = orig, orig_act
    return statistics.median(times[3:] if compile else times[1:])   # fused: the first steps compile


CASES = {"imagenet": ("imagenet", 2, 224), "small": ("small", 128, 28), "small16": ("small16", 128, 16)}


def run_case(name: str, steps: int) -> None:
    space_name, batch, res = CASES[name]
    sp = get_space(space_name)
    ours = time_steps(sp, batch, res, steps, naive=False)
    rss_ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    naive = time_steps(sp, batch, res, steps, naive=True)
    typical = time_steps(sp, batch, res, steps, naive=True, typical=True)
    print(f"{name:10s} {batch:5d} {res:4d} {ours:12.3f} {naive:13.3f} {naive / ours:8.2f}x {typical:11.3f} "
          f"{typical / ours:8.2f}x {batch / ours:8.1f} {rss_ours:9.0f}", flush=True)


def main():
    import subprocess
    import sys
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--case", choices=sorted(CASES), help="run one case in this process")
    ap.add_argument("--device", help="time this project's step only, on this device (e.g. cuda), fp32 and AMP")
    ap.add_argument("--space", default="imagenet")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--res", type=int, default=224)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(0)
    if args.device:
        from nasbnn_hw.train.device import resolve_device
        dev = resolve_device(args.device)
        modes = [""] + (["bf16", "fp16"] if dev.type == "cuda" else ["bf16"])
        print(f"{args.space} batch {args.batch} at {args.res}, {dev}, median of {args.steps} steps after a warm-up")
        print(f"{'amp':6s} {'mode':6s} {'s/step':>9s} {'images/s':>9s}")
        for amp in modes:
            for compile in (False, True):   # eager, then the fused chains (--compile)
                s = time_steps(get_space(args.space), args.batch, args.res, max(args.steps, 4), naive=False,
                               device=args.device, amp=amp, compile=compile)
                print(f"{amp or 'fp32':6s} {'fused' if compile else 'eager':6s} {s:9.3f} {args.batch / s:9.1f}",
                      flush=True)
        return
    if args.case:
        run_case(args.case, args.steps)
        return
    print(f"threads={args.threads}, median of {args.steps} steps after one warm-up; each case in its own process")
    print(f"{'space':10s} {'batch':>5s} {'res':>4s} {'this s/step':>12s} {'naive s/step':>13s} {'speed-up':>9s} "
          f"{'typical s':>11s} {'speed-up':>9s} {'img/s':>8s} {'peak MiB':>9s}")
    for name in CASES:
        subprocess.run([sys.executable, __file__, "--case", name, "--threads", str(args.threads),
                        "--steps", str(args.steps)], check=True)


if __name__ == "__main__":
    main()
