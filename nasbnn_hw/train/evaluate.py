"""Evaluating subnets with inherited weights: BatchNorm recalibration, then top-1/top-5."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from nasbnn_hw.core.arch import Arch
from nasbnn_hw.nn.binary_ops import DynamicBatchNorm2d
from nasbnn_hw.data import iter_batches, sequential
from nasbnn_hw.data.sets import TensorData
from nasbnn_hw.errors import NasBnnError
from nasbnn_hw.train.device import model_device


def calibration_batches(data, num_batches: int, batch_size: int, seed: int = 0, workers: int = 0):
    """Fixed training batches for BN recalibration (official: 10 batches of 2048 images)."""
    if type(num_batches) is not int or type(batch_size) is not int or num_batches < 1 or batch_size < 1:
        raise NasBnnError(f"BN recalibration needs >= 1 batch of >= 1 image (got {num_batches!r} batches of "
                          f"{batch_size!r}): without it the subnet would be evaluated with reset statistics")
    if len(data) == 0:
        raise NasBnnError("BN recalibration needs training images; the training split is empty")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(data), generator=g)
    n = min(len(data), num_batches * batch_size)
    lists = [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    if isinstance(data, TensorData):
        return [data.images[idx] for idx in lists]
    return StreamedBatches(data, lists, workers)


class StreamedBatches:
    """Calibration batches of a streamed dataset, decoded again at each pass (never all held in memory)."""

    def __init__(self, data, index_lists, workers: int = 0):
        self.data, self.index_lists, self.workers = data, index_lists, workers

    def __len__(self):
        return len(self.index_lists)

    def __iter__(self):
        return (x for x, _ in iter_batches(self.data, self.index_lists, 0, workers=self.workers))


@torch.no_grad()
def recalibrate_bn(supernet, arch: Arch, batches: Iterable[torch.Tensor]) -> None:
    """Reset BN running statistics and re-estimate them for `arch` as a cumulative average."""
    supernet.eval()
    bns = [m.bn for m in supernet.modules() if isinstance(m, DynamicBatchNorm2d)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    seen, dev = 0, model_device(supernet)
    for x in batches:
        supernet(x.to(dev), arch)
        seen += 1
    for bn, m in zip(bns, saved):
        bn.momentum = m
        bn.eval()
    if not seen:  # reset and not re-estimated: the accuracy would be silently wrong
        raise NasBnnError("BN recalibration got no batches; give at least one (e.g. --calib-batches 1)")


@torch.no_grad()
def accuracy(model, data, batch_size: int = 1000, arch: Arch | None = None, workers: int = 0) -> dict:
    """top-1 / top-5 (percent) of `model` (a supernet with `arch`, or a static subnet) on `data`."""
    model.eval()
    correct1 = correct5 = 0
    k = min(5, data.num_classes)
    dev = model_device(model)
    for x, y in iter_batches(data, sequential(len(data), batch_size), 0, workers=workers):
        x, y = x.to(dev), y.to(dev)
        logits = model(x, arch) if arch is not None else model(x)
        top = logits.topk(k, dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
    n = max(1, len(data))
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "n": len(data)}


class SubnetEvaluator:
    """Fitness for the search: top-1 on a held-out split after BN recalibration on cached batches.
    A seen arch is never evaluated twice."""

    def __init__(self, supernet, calib: Sequence[torch.Tensor], val: TensorData, batch_size: int = 1000,
                 workers: int = 0):
        self.supernet, self.val, self.batch_size, self.workers = supernet, val, batch_size, workers
        self.calib = calib if isinstance(calib, StreamedBatches) else list(calib)  # a stream is decoded per pass
        self.cache: dict[Arch, float] = {}

    def __call__(self, arch: Arch) -> float:
        acc = self.cache.get(arch)
        if acc is None:
            recalibrate_bn(self.supernet, arch, self.calib)
            acc = accuracy(self.supernet, self.val, self.batch_size, arch, workers=self.workers)["top1"]
            self.cache[arch] = acc
        return acc
