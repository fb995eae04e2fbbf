"""One batch, padded in two parts. Right-padded to its longest row, a batch that mixes 225-token tool transcripts
with 24-token answers pays the transcripts' width for every row; run as two groups (the long rows, the short
rows), each padded to its own longest, it pays ~35% fewer positions. A causal model with right padding gives each
row the same outputs either way, so with each group's mean loss weighted by its share of the batch's target tokens,
a token-mean loss (cross-entropy, KL) and its gradient are the whole batch's: the training order and what a step
sees do not change, only the padding it computes."""
from __future__ import annotations

from typing import Sequence

MIN_SAVING = 0.25  # split only when it saves at least this share of the padded positions (a second pass has overhead)


def length_groups(lengths: Sequence[int], weights: Sequence[float]) -> list[tuple[list[int], float]]:
    """The positions of a batch's rows (``lengths``: each row's length) as one group, or as two (short rows, long
    rows; each in batch order) where padding each group to its own longest row saves >= ``MIN_SAVING`` of the
    positions of padding them all to the longest; each group with its share of the rows' ``weights`` (the target
    tokens its mean loss is taken over), the factor of its loss in the batch's."""
    if not lengths or len(weights) != len(lengths):
        raise ValueError(f"length_groups: need one weight per row and at least one row, got {len(lengths)} rows "
                         f"and {len(weights)} weights")
    order = sorted(range(len(lengths)), key=lambda row: lengths[row])
    padded = len(lengths) * max(lengths)
    best_cost, best_split = padded, 0
    for split in range(1, len(order)):
        cost = split * lengths[order[split - 1]] + (len(order) - split) * lengths[order[-1]]
        if cost < best_cost:
            best_cost, best_split = cost, split
    if best_split == 0 or best_cost > (1 - MIN_SAVING) * padded:
        groups = [list(range(len(lengths)))]
    else:
        groups = [sorted(order[:best_split]), sorted(order[best_split:])]
    total = sum(weights)
    return [(group, sum(weights[row] for row in group) / total) for group in groups]
