"""Writes the bad-input corpus. Small files are committed; the 5 MB one is made on demand.

Each file is otherwise well-formed (enough rows per class) so the test sees the one problem it
is named after.
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent


def rows(n: int = 25, labels=("neg", "pos")) -> list[tuple[str, str]]:
    return [(f"sample text number {i} for {lab}", lab) for lab in labels for i in range(n)]


def write_csv(name: str, data: list[tuple], header=("text", "label"), sep=",", encoding="utf-8") -> None:
    pd.DataFrame(data, columns=list(header)).to_csv(HERE / name, index=False, sep=sep, encoding=encoding)


def relabel(spellings: dict[str, int]) -> list[tuple[str, str]]:
    """Distinct texts whose labels are written as `spellings` ({label as written: rows})."""
    labels = [lab for lab, k in spellings.items() for _ in range(k)]
    return [(f"sample text number {i} for {lab.strip()}", lab) for i, lab in enumerate(labels)]


def emoji_texts() -> list[str]:
    """Texts with no word in them: emoji pairs, and runs of punctuation and currency signs."""
    emoji = ["\U0001F600", "\U0001F622", "\U0001F621", "\U0001F44D", "\U0001F44E", "\u2764\ufe0f", "\U0001F389", "\U0001F525"]
    symbols = ["!!!", "???", "$$$", "...", "#@!", ":-)", ":-(", "<3"]
    return [a + b for a, b in itertools.permutations(emoji, 2)] + [a + " " + b for a, b in itertools.permutations(symbols, 2)]


def make_huge(path: Path) -> Path:
    data = rows()
    data[0] = ("x" * (5 * 1024 * 1024), "neg")
    pd.DataFrame(data, columns=["text", "label"]).to_csv(path, index=False)
    return path


def main() -> None:
    (HERE / "empty.csv").write_bytes(b"")
    (HERE / "header_only.csv").write_text("text,label\n")
    write_csv("missing_label_column.csv", [(t,) for t, _ in rows()], header=("text",))
    write_csv("wrong_delimiter.csv", rows(), sep=";")
    write_csv("non_utf8.csv", rows() + [("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e", "pos")], encoding="latin-1")
    write_csv("labels_outside_set.csv", rows() + [("who knows", "maybe")] * 3)
    write_csv("single_class.csv", rows(labels=("pos",)))
    write_csv("all_null_text.csv", [("", lab) for _, lab in rows()])
    write_csv("only_duplicates.csv", [("the same sentence again", lab) for _, lab in rows()])
    blob = bytes((i * 7919 + 13) % 256 for i in range(4096))
    (HERE / "binary_garbage.csv").write_bytes(blob)
    pd.DataFrame({"a": range(60), "b": [1.5] * 60}).to_parquet(HERE / "wrong_schema.parquet", index=False)
    # labels: case-only variants fail unless folded; spaces and number formats merge (each alone is < 20 rows)
    write_csv("case_only_labels.csv", relabel({"Positive": 15, "positive": 10, "negative": 25}))
    write_csv("label_spaces.csv", relabel({"pos": 15, "pos ": 5, " pos ": 5, " neg": 25}))
    write_csv("numeric_labels.csv", relabel({"0": 15, "0.0": 10, "1": 10, "1.0": 10, " 1 ": 5}))
    write_csv("numbers_and_words.csv", relabel({"0": 25, "0.0": 25, "none": 25}))  # not all numbers: 3 classes
    # text columns: numbers are not text; emoji and symbols are
    write_csv("numeric_text.csv", [(str(i * 7) if i % 2 else f"{i / 4:.2f}", lab) for i, (_, lab) in enumerate(rows())])
    write_csv("emoji_text.csv", [(t, ("pos", "neg")[i % 2]) for i, t in enumerate(emoji_texts())])
    # JSON: an array of records is a table (labels as JSON numbers, 1 and 1.0 alike); other shapes are named
    records = [{"text": t, "label": {"neg": 0, "pos": 1.0 if i % 2 else 1}[lab]} for i, (t, lab) in enumerate(rows())]
    (HERE / "records.json").write_text(json.dumps(records, indent=1))
    (HERE / "object_not_records.json").write_text(json.dumps({"version": 2, "data": records}))
    (HERE / "array_of_arrays.json").write_text(json.dumps([["text", "label"]] + [list(r) for r in rows()]))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        make_huge(Path(sys.argv[1]))
    else:
        main()
