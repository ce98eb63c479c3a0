"""Deterministic batch order for training and evaluation, DDP-aware.

Training is one endless stream of batches indexed by the global step: pass p
over the data is a permutation seeded by (seed, p). Resuming at step s
regenerates the stream from s, so a resumed run sees exactly the batches an
uninterrupted one would. With length bucketing, rows of similar prompt
length share a batch (less padding); the batch order is still shuffled.
"""
import numpy as np

from .packing import group_order

BUCKET_BATCHES = 64  # a bucket spans this many global batches before sorting by length


class TrainBatchStream:
    """Yields lists of row indices for ``rank``; every rank yields the same count.

    lengths [N]: prompt length per row (only its order matters).
    A global batch is batch_size * world_size rows; rank r takes its slice.
    """

    def __init__(self, lengths, batch_size: int, seed: int, world_size: int = 1, rank: int = 0,
                 bucketing: bool = True):
        self.lengths = np.asarray(lengths)
        self.n = len(self.lengths)
        self.batch_size, self.seed = batch_size, seed
        self.world_size, self.rank = world_size, rank
        self.bucketing = bucketing
        self.global_batch = batch_size * world_size
        self.batches_per_pass = -(-self.n // self.global_batch)

    def _pass(self, p: int):
        rng = np.random.RandomState((self.seed * 1_000_003 + p) % (2 ** 32))
        order = rng.permutation(self.n)
        # Full batches: wrap around to the pass's start (several times when a
        # global batch is larger than the data).
        order = np.resize(order, self.batches_per_pass * self.global_batch)
        if self.bucketing:
            span = self.global_batch * BUCKET_BATCHES
            for s in range(0, len(order), span):
                chunk = order[s:s + span]
                order[s:s + span] = chunk[np.argsort(self.lengths[chunk], kind="stable")]
        batches = order.reshape(self.batches_per_pass, self.world_size, self.batch_size)
        if self.bucketing:
            batches = batches[rng.permutation(self.batches_per_pass)]
        return batches[:, self.rank]

    def iter_from(self, step: int):
        """Endless iterator of this rank's batches starting at global step ``step``."""
        p, offset = divmod(step, self.batches_per_pass)
        while True:
            for b in self._pass(p)[offset:]:
                yield b.tolist()
            p, offset = p + 1, 0


def eval_batches(lengths, batch_size: int, world_size: int = 1, rank: int = 0, max_rows=None, groups=None):
    """This rank's evaluation batches (lists of row indices).

    Batches are cut from the rows sorted by length (little padding) the same
    way whatever the world size, then dealt out whole: each row is scored in
    the same batch under 1 or N processes, so scores match bit for bit and no
    row is duplicated or dropped. With ``groups`` [N] (rows sharing a prompt
    prefix), a group's rows are contiguous instead, so they land in one batch
    (a group larger than a batch is cut into batch-sized pieces).
    """
    lengths = np.asarray(lengths)
    n = len(lengths) if max_rows is None else min(len(lengths), max_rows)
    if groups is not None:
        order = group_order(np.asarray(groups)[:n], lengths[:n])
    else:
        order = np.argsort(lengths[:n], kind="stable")
    batches = [order[s:s + batch_size].tolist() for s in range(0, n, batch_size)]
    return batches[rank::world_size]
