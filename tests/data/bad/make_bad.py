"""Writes the bad-input corpus. Small files are committed; the 5 MB one is made on demand.

Each file is otherwise well-formed (enough rows per class) so the test sees the one problem it
is named after.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent


def rows(n: int = 25, labels=("neg", "pos")) -> list[tuple[str, str]]:
    return [(f"sample text number {i} for {lab}", lab) for lab in labels for i in range(n)]


def write_csv(name: str, data: list[tuple], header=("text", "label"), sep=",", encoding="utf-8") -> None:
    pd.DataFrame(data, columns=list(header)).to_csv(HERE / name, index=False, sep=sep, encoding=encoding)


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


if __name__ == "__main__":
    if len(sys.argv) > 1:
        make_huge(Path(sys.argv[1]))
    else:
        main()
