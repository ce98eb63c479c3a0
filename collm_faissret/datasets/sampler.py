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
    prefix), batches are cut at group boundaries instead (``group_batches``):
    a group that fits in a batch is never split, so its prefix is computed
    once; a group larger than a batch is cut into batch-sized pieces. Batches
    then hold at most ``batch_size`` rows, not all exactly that many.
    """
    lengths = np.asarray(lengths)
    n = len(lengths) if max_rows is None else min(len(lengths), max_rows)
    if groups is not None:
        groups = np.asarray(groups)[:n]
        batches = group_batches(group_order(groups, lengths[:n]), groups, batch_size)
    else:
        order = np.argsort(lengths[:n], kind="stable")
        batches = [order[s:s + batch_size].tolist() for s in range(0, n, batch_size)]
    return batches[rank::world_size]


def group_batches(order, groups, batch_size: int):
    """Batches (lists of row indices, at most ``batch_size`` rows) of rows ``order`` whose groups
    are contiguous, cut at group boundaries: whole groups fill the open batch in order until the
    next one does not fit, which then starts a new batch.

    A group of s > batch_size rows is cut into ceil(s / batch_size) pieces, the fewest possible
    (each computes the group's prefix, except a piece over the prefix cache right after a batch
    that held the group over the cache too: it takes that batch's, models/shared_prefix.py
    ``PrefixMemo``): s // batch_size full pieces, each a batch of its own (consecutive),
    and a remainder of s % batch_size rows (its first rows), placed as a whole group of that size
    would be: in the open batch if it fits there, else starting the next one. Letting it share a
    batch costs no prefix (every group in a batch computes its own prefix anyway) and saves a
    short batch: with group_order's sizes ascending, the remainders of a run of groups of 50 at
    batch 16 fill one batch per 8 groups. What is never done is filling a batch's free rows with
    a piece of a group that does not fit whole there: that can cut the group into one piece more
    than it needs (48 rows at batch 16 as 14 + 16 + 16 + 2 instead of 16 + 16 + 16: one
    piece more, which computes the prefix again). The remainder's batch follows the full pieces of the last
    group whose remainder it holds (K=100 at batch 64: 64 rows, then 36, the prefix computed once).
    """
    order = np.asarray(order)
    groups = np.asarray(groups)
    batches, open_batch = [], []
    starts = np.flatnonzero(np.r_[True, groups[order[1:]] != groups[order[:-1]]]) if len(order) else []
    for a, b in zip(starts, list(starts[1:]) + [len(order)]):
        rows = order[a:b].tolist()
        rest = len(rows) % batch_size if len(rows) > batch_size else len(rows)
        if rest:
            if len(open_batch) + rest > batch_size:
                batches.append(open_batch)
                open_batch = []
            open_batch += rows[:rest]
        batches += [rows[s:s + batch_size] for s in range(rest, len(rows), batch_size)]
    if open_batch:
        batches.append(open_batch)
    return batches
