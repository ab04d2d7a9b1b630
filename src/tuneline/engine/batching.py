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


class EncodedDataset(torch.utils.data.Dataset):
    """Token ids tokenised once up front; labels optional (inference)."""

    def __init__(self, input_ids: list[list[int]], labels: Sequence[int] | None = None):
        self.input_ids = input_ids
        self.labels = None if labels is None else list(map(int, labels))

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.input_ids[i]}
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


class RowDataset(torch.utils.data.Dataset):
    """Row positions (and labels): the batch is built by a collate that looks the rows up."""

    def __init__(self, n: int, labels: Sequence[int] | None = None):
        self.n = n
        self.labels = None if labels is None else list(map(int, labels))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"row": i} if self.labels is None else {"row": i, "labels": self.labels[i]}


def loader(dataset: torch.utils.data.Dataset, sampler: LengthGroupedBatches, collate, pin: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, pin_memory=pin, num_workers=0)
