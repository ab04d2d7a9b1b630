"""Length-grouped batches with dynamic padding: little compute is spent on pad tokens."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch


class LengthGroupedBatches:
    """Shuffle, cut into mega-batches of `group` batches, sort each by length, then shuffle the
    batches: similar lengths share a batch while the order still changes every epoch."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True, group: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.shuffle, self.group = batch_size, seed, shuffle, group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            yield from (order[i : i + self.batch_size].tolist() for i in range(0, n, self.batch_size))
            return
        rng = np.random.default_rng(self.seed + self.epoch)
        perm = rng.permutation(n)
        mega = self.batch_size * self.group
        batches = []
        for start in range(0, n, mega):
            chunk = perm[start : start + mega]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        for i in rng.permutation(len(batches)):
            yield batches[i]

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


IGNORE = -100  # torch's ignore_index: a row that is there only to keep a rank in step (Shard)


class Shard:
    """One data-parallel rank's part of every batch of `batches` (the global batches, in the order
    one process would train on them): a contiguous share of near-equal size, so the ranks together
    see exactly the one-process rows. A rank whose share of a short last batch would be empty still
    has to run forward and backward (DDP's all-reduce waits for every rank): it gets the batch's
    first row as ~row, which LabelledRows labels IGNORE and the loss counts zero times."""

    def __init__(self, batches: LengthGroupedBatches, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.batches:
            lo, hi = len(idx) * self.rank // self.world, len(idx) * (self.rank + 1) // self.world
            yield idx[lo:hi] or [~idx[0]]

    def __len__(self) -> int:
        return len(self.batches)


def encode(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of `texts`, truncated and unpadded (each batch pads on its own)."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def in_length_order(lengths: Sequence[int], batch_size: int, desc: str) -> Iterator[list[int]]:
    """Positions in batches of similar length (each pads little), counted on a progress bar of texts."""
    from tqdm.auto import tqdm

    with tqdm(total=len(lengths), desc=desc, unit="text", leave=False) as bar:
        for idx in LengthGroupedBatches(lengths, batch_size, 0, shuffle=False):
            yield idx
            bar.update(len(idx))


class LabelledRows(torch.utils.data.Dataset):
    """Items {field: values[i]} (token ids tokenised once up front, or row positions that a collate
    looks up), with "labels" when labels are given: none at inference."""

    def __init__(self, field: str, values: Sequence, labels: Sequence[int] | None = None):
        self.field, self.values = field, values
        self.labels = None if labels is None else list(map(int, labels))

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> dict:
        if i < 0:  # a placeholder row (Shard): its values, no label
            return {self.field: self.values[~i], "labels": IGNORE}
        item = {self.field: self.values[i]}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


def make_collate(pad_token_id: int):
    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, it in enumerate(items):
            ids[row, : len(it["input_ids"])] = torch.tensor(it["input_ids"], dtype=torch.long)
            mask[row, : len(it["input_ids"])] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if "labels" in items[0]:
            batch["labels"] = torch.tensor([it["labels"] for it in items], dtype=torch.long)
        return batch

    return collate


def loader(dataset: torch.utils.data.Dataset, sampler: LengthGroupedBatches | Shard, collate, pin: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, pin_memory=pin, num_workers=0)
