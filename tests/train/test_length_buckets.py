"""Length-bucketed batches: every row once per epoch, batches of similar lengths, deterministic per seed."""
from __future__ import annotations

import torch

from explainrec.training.loop import LengthBuckets


def test_every_row_once_similar_lengths_and_seeded():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 400, (203,), generator=gen).tolist()
    batches = list(LengthBuckets(lengths, 4, 8, torch.Generator().manual_seed(1)))
    assert sorted(i for b in batches for i in b) == list(range(203)) and len(batches) == 51
    assert batches == list(LengthBuckets(lengths, 4, 8, torch.Generator().manual_seed(1)))
    assert batches != list(LengthBuckets(lengths, 4, 8, torch.Generator().manual_seed(2)))

    def padding(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    plain = torch.randperm(203, generator=torch.Generator().manual_seed(1)).tolist()
    shuffled = [plain[j: j + 4] for j in range(0, 203, 4)]
    assert padding(batches) < 0.3 * padding(shuffled)
    # the order of batches is shuffled too: not simply shortest first
    firsts = [min(lengths[i] for i in b) for b in batches]
    assert firsts != sorted(firsts)
