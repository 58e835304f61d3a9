"""Which samples an epoch visits: weighted mixing of sources, deterministic per (seed, epoch), split across
DDP ranks.

Training indices carry their epoch: the sampler yields `epoch × len(dataset) + i`, and the dataset reads
item i of that epoch (`training.data.MixedDataset.locate`). On-the-fly sources (synth, TIP) make new bags
and augmentation draws new parameters from that, with no state shared between DataLoader workers — so
persistent workers, any worker count and any rank see the same data for the same (seed, epoch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def source_shares(weights: Sequence[float], total: int) -> np.ndarray:
    """Samples per source in an epoch of `total`: proportional to `weights`, summing exactly to `total`
    (largest remainder), 0 for a zero weight."""
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or w.size == 0 or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"source weights must be finite, ≥ 0 and not all 0, got {list(weights)}")
    exact = w / w.sum() * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return counts


class WeightedSourceSampler(Sampler[int]):
    """Indices into a concatenation of sources (sizes `sizes`), mixed by `weights`.

    Train mode (`train=True`): an epoch holds `epoch_len` draws (default: the sum of sizes), rounded up
    to a multiple of `world_size` so every rank takes the same number of steps; source s gets its share by
    weight, drawn without replacement from a fresh permutation of its items (cycling through further
    permutations when its share exceeds its size); the whole epoch is shuffled; rank r takes positions
    r, r + world_size, … — disjoint shards that together are the epoch. Yielded indices are tagged with
    the epoch (epoch × sum(sizes) + i).
    Eval mode (`train=False`): every item once, in order, untagged, sharded the same way (ranks may differ
    by one item).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        *,
        epoch_len: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        train: bool = True,
    ) -> None:
        if len(sizes) != len(weights):
            raise ValueError(f"{len(sizes)} sources but {len(weights)} weights")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if any(int(n) < 0 for n in sizes) or sum(sizes) == 0:
            raise ValueError(f"sources are empty: sizes {list(sizes)}")
        self.sizes = tuple(int(n) for n in sizes)
        self.weights = tuple(float(w) for w in weights)
        self.total = sum(self.sizes)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.train = bool(train)
        self.epoch = 0
        n = self.total if epoch_len is None else int(epoch_len)
        if n <= 0:
            raise ValueError(f"epoch_len must be > 0, got {epoch_len}")
        self.epoch_len = -(-n // self.world_size) * self.world_size if train else self.total
        if train:
            # A weighted source with no items cannot supply its share: say so rather than reweight silently.
            empty = [i for i, (s, w) in enumerate(zip(self.sizes, self.weights, strict=True)) if s == 0 and w > 0]
            if empty:
                raise ValueError(f"sources {empty} have weight > 0 but no samples")
            self.counts = source_shares(self.weights, self.epoch_len)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: its draws, order and (through the tag) its on-the-fly bags."""
        self.epoch = int(epoch)

    def epoch_indices(self) -> np.ndarray:
        """All ranks' indices of the current epoch, in order (int64); rank r's are `[r::world_size]`."""
        if not self.train:
            return np.arange(self.total, dtype=np.int64)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, 0x5A4D]))
        offsets = np.cumsum((0, *self.sizes[:-1]))
        parts = []
        for size, count, offset in zip(self.sizes, self.counts, offsets, strict=True):
            if count == 0:
                continue
            reps = -(-int(count) // size)
            draws = np.concatenate([rng.permutation(size) for _ in range(reps)])[:count]
            parts.append(draws + offset)
        indices = rng.permutation(np.concatenate(parts))
        return indices.astype(np.int64) + np.int64(self.epoch) * self.total

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        n = self.epoch_len
        return n // self.world_size + (1 if self.rank < n % self.world_size else 0)
