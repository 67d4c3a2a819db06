"""Datasets: the small in-memory sets (Fashion-MNIST, digits, CIFAR-10: `sets.TensorData`) and image folders
read lazily (`folder.FolderData`), behind one way to draw batches: `iter_batches`."""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch


def iter_batches(data, index_lists: Iterable[Sequence[int]], epoch: int = 0,
                 workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) for each list of sample indices, in order. In-memory data is sliced (with its
    per-sample augmentation, if any); a folder is decoded by `workers` DataLoader processes. A sample's
    randomness depends on (seed, epoch, index) only, so the batches are the same for any number of workers
    and processes."""
    from .sets import TensorData
    if isinstance(data, TensorData):
        for idx in index_lists:
            yield data.batch(torch.as_tensor(idx, dtype=torch.long), epoch)
        return
    from .folder import batches
    yield from batches(data, [list(map(int, idx)) for idx in index_lists], epoch, workers=workers)


def sequential(n: int, batch_size: int) -> list[list[int]]:
    """Index lists 0..n-1 in batches (evaluation order)."""
    return [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]
