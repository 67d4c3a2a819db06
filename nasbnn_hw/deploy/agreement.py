"""Why a deployed binary subnet's logits differ from PyTorch's: a sign at a value within rounding of zero, or a bug.

A binary activation is `sign(x + move)`. Two float32 implementations that sum in different orders may disagree
on the sign of a value within rounding of zero (PyTorch may compute an exact 0 where the kernels get
-1e-9), and PyTorch's `sign(0) = 0` while a binary kernel must pick +1 (the kernels: bit 1 for
`x + move >= 0`). One such flip early in a network can move the logits by percent, so
a plain tolerance cannot tell it from a bug. `explain` replays the PyTorch forward with the kernels'
convention at exact zeros and then searches (greedily) for a few sign flips, among values within
`rel_zero` of zero, that bring PyTorch onto the deployed logits. Found: the difference is rounding, and the
flips are named; not found: it is not explained by rounding.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Flip", "Explanation", "explain", "sign_inputs"]


@dataclass(frozen=True)
class Flip:
    block: int          # index into model.blocks
    conv: str           # which binary conv of the block takes it: "3x3" / "5x5" (the first) or "1x1"
    position: tuple     # (n, c, h, w) of the activation
    value: float        # x + move there (PyTorch, float32)
    relative: float     # |value| / max |x + move| of that activation

    def __str__(self):
        n, c, h, w = self.position
        return (f"block {self.block} {self.conv} input at (n={n}, c={c}, y={h}, x={w}): {self.value:+.2e} "
                f"({self.relative:.1e} of the activation's largest)")


@dataclass
class Explanation:
    explained: bool
    zeros: int                          # exact zeros after the bias (sign 0 in PyTorch, +1 in the kernels)
    flips: list[Flip] = field(default_factory=list)
    err_before: float = 0.0             # max rel err of the deployed logits vs PyTorch
    err_after: float = 0.0              # ... vs PyTorch with the kernels' sign at zeros and the flips

    def __str__(self):
        if not self.explained:
            return (f"not explained by signs at values within rounding of zero (best: {len(self.flips)} flip(s), "
                    f"max rel err {self.err_before:.1e} -> {self.err_after:.1e}): likely a bug")
        parts = []
        if not self.zeros and not self.flips:
            return f"agrees to {self.err_after:.1e}"
        if self.zeros:
            parts.append(f"{self.zeros} exact zero(s) after the bias (PyTorch sign(0) = 0, the kernels' +1)")
        if self.flips:
            parts.append(f"{len(self.flips)} sign flip(s) of values within float32 rounding of zero: "
                         + "; ".join(map(str, self.flips)))
        return (f"explained by {' and '.join(parts)}; with them PyTorch agrees to {self.err_after:.1e} "
                f"(was {self.err_before:.1e}): rounding, not a bug")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _kernel_sign(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def _block(b, x, sign):
    """StaticBinaryBlock.forward with its two binarisations replaced by `sign(tensor, part)`."""
    from nasbnn_hw.nn.binary_ops import shortcut_tile
    h = b.bn1(b.binary_conv(sign(x + b.move11, 0)))
    h = h + (F.avg_pool2d(x, 2, 2) if b.stride == 2 else x)
    y = b.prelu1(h + b.move12) + b.move13
    h = b.bn2(b.binary_conv1x1(sign(y + b.move21, 1)))
    h = h + shortcut_tile(y, b.out_channels)
    return b.prelu2(h + b.move22) + b.move23


def _head(model, x):
    return model.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class _Replay:
    """The PyTorch forward of a static subnet from any block on, with block inputs cached."""

    def __init__(self, model, x: torch.Tensor):
        self.model = model
        self.inputs, self.pre = [], []    # input of every block; x + move before each sign (2 per block)
        with torch.no_grad():
            h = model.stem(x)
            for b in model.blocks:
                self.inputs.append(h)
                h = _block(b, h, lambda t, part: (self.pre.append(t), torch.sign(t))[1])
            self.ref = _head(model, h).numpy()

    def run(self, flips: dict[int, torch.Tensor]) -> np.ndarray:
        """Logits with the kernels' sign at zeros, and the sign negated at flat positions `flips[k]` of
        pre-sign activation k (k = 2 * block + part)."""
        first = min(flips, default=0) // 2

        def signs(j):
            def sign(t, part):
                s = _kernel_sign(t)
                if 2 * j + part in flips:
                    idx = flips[2 * j + part]
                    s = s.flatten().clone()
                    s[idx] = -s[idx]
                    s = s.view_as(t)
                return s
            return sign
        with torch.no_grad():
            h = self.inputs[first]
            for j, b in enumerate(self.model.blocks[first:], first):
                h = _block(b, h, signs(j))
            return _head(self.model, h).numpy()


def sign_inputs(model, x: torch.Tensor) -> list[torch.Tensor]:
    """Every pre-sign activation (`x + move`) of a static subnet's forward, two per block, in order."""
    return _Replay(model, x).pre


def explain(model, x, got: np.ndarray, tol: float = 1e-4, rel_zero: float = 1e-5, max_candidates: int = 256,
            max_flips: int = 4, time_budget_s: float = 120.0) -> Explanation:
    """Explain deployed logits `got` for input `x` against the static subnet `model` (see the module doc).
    Each input of the batch is explained on its own (a flip moves only its own logits); the flip search
    stops after `time_budget_s` seconds in all (a large subnet at 224 replays in about a second)."""
    deadline = time.monotonic() + time_budget_s
    x = torch.as_tensor(np.asarray(x, np.float32))
    got = np.asarray(got, np.float32)
    ref = _Replay(model, x).ref
    before, parts = _rel(got, ref), []
    for n in range(x.shape[0]):
        parts.append(_explain_one(model, x[n: n + 1], got[n: n + 1], np.abs(ref).max(), tol, rel_zero,
                                  max_candidates, max_flips, n, deadline))
    flips = [f for p in parts for f in p[2]]
    return Explanation(all(p[0] for p in parts), sum(p[1] for p in parts), flips, before, max(p[3] for p in parts))


def _explain_one(model, x, got, scale: float, tol: float, rel_zero: float, max_candidates: int, max_flips: int,
                 n: int, deadline: float) -> tuple[bool, int, list[Flip], float]:
    """(explained, zeros, flips, error after) for one input; errors relative to `scale` (the batch's largest
    logit, as the agreement check measures)."""
    def rel(a):
        return float(np.abs(got - a).max() / max(scale, 1e-12))
    rp = _Replay(model, x)
    zeros = sum(int((t == 0).sum()) for t in rp.pre)
    err = rel(rp.run({}))
    cands = []
    for k, t in enumerate(rp.pre):
        a = t.abs().flatten()
        mx = float(a.max()) or 1.0
        idx = torch.nonzero(a <= rel_zero * mx).flatten()   # exact zeros too: the other side may be -1e-9
        cands += [(float(a[i]) / mx, k, int(i)) for i in idx]
    cands = sorted(cands)[:max_candidates]
    chosen: dict[int, list[int]] = {}
    picked: list[tuple[int, int]] = []
    while err > tol and len(picked) < max_flips and cands:
        best = None
        for c in cands:
            if (c[1], c[2]) in picked:
                continue
            if time.monotonic() > deadline:
                break
            trial = {k: torch.tensor(v) for k, v in chosen.items()}
            trial[c[1]] = torch.tensor(chosen.get(c[1], []) + [c[2]])
            e = rel(rp.run(trial))
            if best is None or e < best[0]:
                best = (e, c)
                if e <= tol:   # this flip explains it: no need to try the rest
                    break
        if best is None or best[0] >= err * 0.9:
            break
        err, (_, k, i) = best[0], best[1]
        chosen.setdefault(k, []).append(i)
        picked.append((k, i))
    flips = []
    for k, i in picked:
        t = rp.pre[k]
        pos = np.unravel_index(i, tuple(t.shape))
        kk = model.blocks[k // 2].binary_conv.kernel if k % 2 == 0 else 1
        flips.append(Flip(k // 2, f"{kk}x{kk}", (n, *(int(p) for p in pos[1:])), float(t.flatten()[i]),
                          float(t.flatten()[i].abs() / t.abs().max())))
    return err <= tol, zeros, flips, err
