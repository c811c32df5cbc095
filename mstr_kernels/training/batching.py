"""Length-bucketed batches (default), padding collation, and the fixed padded lengths a
compiled model trains on.

Each epoch shuffles the items with a generator seeded by (seed, epoch), sorts pools of
`pool_batches` batches by length, cuts them into batches of similar lengths and shuffles the
batch order: little padding, still random. Under DDP every global batch is split between the
ranks (rank r takes items r, r+W, ...), so W processes see exactly the global batches of one
(except that a last batch of fewer than W items joins the one before).

A compiled model (`torch.compile(dynamic=False)`) compiles once per input shape, so for it
`PadCollate(buckets=..., rows=...)` pads every batch to one of a few fixed lengths
(`length_buckets`: multiples of p**levels) and to a fixed number of rows (extra rows have length 0
and the label `IGNORE_LABEL`, which cross-entropy skips): one compilation per bucket.
"""
from __future__ import annotations

import math
from typing import Iterator, List, Optional, Sequence

import torch
from torch.utils.data import Sampler


class _DistributedBatchSampler(Sampler[List[int]]):
    """What both samplers share: the rank check, the (seed, epoch)-seeded item order, resuming at
    a global batch, and each rank taking items r, r+W, ... of every global batch (a subclass's
    `global_batches()`)."""

    def __init__(self, lengths: Sequence[int], shuffle: bool, seed: int, rank: int,
                 world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.lengths = list(lengths)
        self.shuffle = shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Which epoch's order to produce, and the global batch to start from (resume)."""
        self.epoch, self.start_batch = epoch, start_batch

    def epoch_order(self):
        """(item order, generator): shuffled with a generator seeded by (seed, epoch), or in
        order with no generator when shuffle is off."""
        n = len(self.lengths)
        if not self.shuffle:
            return list(range(n)), None
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(n, generator=g).tolist(), g

    def __iter__(self) -> Iterator[List[int]]:
        for batch in self.global_batches()[self.start_batch:]:
            yield batch[self.rank::self.world_size]


class LengthBucketBatchSampler(_DistributedBatchSampler):
    def __init__(self, lengths: Sequence[int], batch_size: int, *, shuffle: bool = True,
                 bucket: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pool_batches: int = 50):
        if batch_size < world_size:
            raise ValueError(f"batch_size={batch_size} must be >= world_size={world_size}: "
                             f"each global batch is split between the processes")
        super().__init__(lengths, shuffle, seed, rank, world_size)
        self.batch_size, self.bucket = batch_size, bucket
        self.pool_batches = pool_batches

    def global_batches(self) -> List[List[int]]:
        n = len(self.lengths)
        order, g = self.epoch_order()
        if self.bucket:
            pool = self.batch_size * self.pool_batches
            order = [i for s in range(0, n, pool)
                     for i in sorted(order[s:s + pool], key=lambda i: self.lengths[i])]
        batches = [order[s:s + self.batch_size] for s in range(0, n, self.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < self.world_size:
            # too few items to give every rank one: they join the previous batch
            batches[-2].extend(batches.pop())
        if self.shuffle:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        return batches

    def __len__(self) -> int:
        n, b = len(self.lengths), self.batch_size
        batches = -(-n // b)
        if batches > 1 and 0 < n % b < self.world_size:
            batches -= 1
        return max(0, batches - self.start_batch)


def sequence_lengths(dataset) -> List[int]:
    """Frame counts of a dataset's items: its `lengths` attribute when it has one (corpora should:
    it saves reading every item), else by reading each item."""
    lengths = getattr(dataset, "lengths", None)
    if lengths is not None:
        return [int(n) for n in lengths]
    return [int(dataset[i][0].shape[0]) for i in range(len(dataset))]


# The label of a padding row: F.cross_entropy's default ignore_index, so it adds no loss.
IGNORE_LABEL = -100


def length_buckets(max_length: int, unit: int) -> List[int]:
    """The padded lengths for items of up to `max_length` frames: multiples of `unit` (MSTR's
    p**levels, the longest window) by 1, 2, 3, 4, 6, 8, 12, ... (each step at most 2x, from 2 on
    at most 1.5x, so padding adds at most half of a batch's frames), the last one covering
    `max_length`: few (9 up to 21 units), so a compiled model compiles few times."""
    if max_length < 1 or unit < 1:
        raise ValueError(f"max_length={max_length} and unit={unit} must be >= 1")
    top = math.ceil(max_length / unit)
    ladder = sorted({m << i for i in range(top.bit_length()) for m in (1, 3)})
    return [k * unit for k in ladder if k < top] + [top * unit]


class PadCollate:
    """Items (features (T, F), label) -> (x (B, T_max, F), lengths (B,), labels (B,)).

    fixed_length=None pads to the longest item of the batch, or with `buckets` (ascending
    lengths) to the shortest bucket that holds it; fixed_length=N pads or cuts every item to N
    frames (the paper's protocol; lengths are then cut to N too). `rows`: pad the batch to this
    many rows (length 0, label IGNORE_LABEL), so that every batch has the same shape."""

    def __init__(self, fixed_length: Optional[int] = None, buckets: Optional[Sequence[int]] = None,
                 rows: Optional[int] = None):
        if fixed_length is not None and fixed_length < 1:
            raise ValueError(f"fixed_length={fixed_length} must be >= 1 or None")
        if buckets is not None and (not buckets or list(buckets) != sorted(buckets)
                                    or buckets[0] < 1):
            raise ValueError(f"buckets={buckets} must be ascending lengths >= 1")
        if rows is not None and rows < 1:
            raise ValueError(f"rows={rows} must be >= 1 or None")
        self.fixed_length, self.rows = fixed_length, rows
        self.buckets = list(buckets) if buckets is not None else None

    def padded_length(self, longest: int) -> int:
        if self.fixed_length is not None:
            return self.fixed_length
        if self.buckets is None:
            return max(longest, 1)
        for b in self.buckets:
            if b >= longest:
                return b
        raise ValueError(f"an item of {longest} frames is longer than the longest bucket "
                         f"{self.buckets[-1]}")

    def __call__(self, items):
        feats = [torch.as_tensor(f) for f, _ in items]
        if self.fixed_length is not None:
            feats = [f[:self.fixed_length] for f in feats]
        n = len(feats)
        rows = max(n, self.rows or 0)
        lengths = torch.zeros(rows, dtype=torch.int64)
        lengths[:n] = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
        T = self.padded_length(int(lengths.max()))
        x = feats[0].new_zeros((rows, T, feats[0].shape[1]))
        for i, f in enumerate(feats):
            x[i, :f.shape[0]] = f
        labels = torch.full((rows,), IGNORE_LABEL, dtype=torch.int64)
        labels[:n] = torch.tensor([int(y) for _, y in items], dtype=torch.int64)
        return x, lengths, labels


class PackedBatchSampler(_DistributedBatchSampler):
    """Packed batches of about `batch_frames` frames: the counterpart of LengthBucketBatchSampler
    for packed input (`mstr train --packed`), where a batch costs its frames, not its longest
    item times its size, so no sorting by length is needed.

    Each epoch shuffles the items with a generator seeded by (seed, epoch) and cuts the order
    greedily: a batch takes items while its frames stay within `batch_frames` (an item longer
    than that makes a batch of its own) and holds at least `world_size` items, which DDP splits
    between the ranks as LengthBucketBatchSampler's batches are."""

    def __init__(self, lengths: Sequence[int], batch_frames: int, *, shuffle: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        if batch_frames < 1:
            raise ValueError(f"batch_frames={batch_frames} must be >= 1")
        super().__init__(lengths, shuffle, seed, rank, world_size)
        self.batch_frames = batch_frames

    def global_batches(self) -> List[List[int]]:
        order, _ = self.epoch_order()
        batches, batch, frames = [], [], 0
        for i in order:
            if len(batch) >= self.world_size and frames + self.lengths[i] > self.batch_frames:
                batches.append(batch)
                batch, frames = [], 0
            batch.append(i)
            frames += self.lengths[i]
        if batch:
            if len(batch) < self.world_size and batches:
                batches[-1].extend(batch)  # too few items to give every rank one
            else:
                batches.append(batch)
        return batches

    def __len__(self) -> int:
        return max(0, len(self.global_batches()) - self.start_batch)


class PackCollate:
    """Items (features (T, F), label) -> (x (total, F) the items' frames concatenated, lengths
    (B,), labels (B,)); `cu_seqlens(lengths)` gives the model's cu_seqlens."""

    def __call__(self, items):
        feats = [torch.as_tensor(f) for f, _ in items]
        lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
        labels = torch.tensor([int(y) for _, y in items], dtype=torch.int64)
        return torch.cat(feats), lengths, labels


def cu_seqlens(lengths: torch.Tensor) -> torch.Tensor:
    """(N,) lengths -> int32 (N+1,) cumulative lengths from 0, on lengths' device (no sync)."""
    return torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
