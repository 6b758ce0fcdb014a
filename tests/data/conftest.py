"""Writers of small on-disk datasets in every supported format (each test builds its own in tmp_path)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from types import SimpleNamespace


def xrec_row(user, item, split="train", explanation="Great tacos and friendly staff.", **extra) -> dict:
    row = {
        "user": user,
        "item": item,
        "title": f"Place {item}",
        "user_profile": f"User {user} likes food.",
        "item_profile": f"Item {item} serves food.",
        "explanation": explanation,
        "split": split,
    }
    row.update(extra)
    return row


def write_xrec(folder: Path, rows: list[dict], edges: list[tuple], header: str = "user,item,split") -> Path:
    """An XRec folder: explanations.jsonl from ``rows``, interactions.csv from ``edges``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [header] + [",".join(str(v) for v in e) for e in edges]
    (folder / "interactions.csv").write_text("\n".join(lines) + "\n")
    return folder


def peter_reviews(n: int = 20) -> list[dict]:
    return [
        {
            "user": f"U{r % 5}",
            "item": f"I{r % 7}",
            "rating": float(1 + r % 5),
            "template": (f"feat{r % 3}", "good", f"the feat{r % 3} is good number {r}", 1),
            "text": "extra keys are ignored",
        }
        for r in range(n)
    ]


def write_peter(folder: Path, reviews: list[dict], splits: dict[str, list], index_dir: str = "1") -> Path:
    """reviews.pickle + <index_dir>/{train,validation,test}.index; index values are written as given."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "reviews.pickle", "wb") as f:
        pickle.dump(reviews, f)
    (folder / index_dir).mkdir(exist_ok=True)
    for name, rows in splits.items():
        (folder / index_dir / f"{name}.index").write_text(" ".join(str(r) for r in rows) + "\n")
    return folder


@pytest.fixture
def writers() -> SimpleNamespace:
    """The writers above, as a fixture (test modules cannot import this conftest reliably)."""
    return SimpleNamespace(xrec_row=xrec_row, write_xrec=write_xrec, peter_reviews=peter_reviews,
                           write_peter=write_peter)


@pytest.fixture
def peter_folder(tmp_path: Path) -> Path:
    reviews = peter_reviews(20)
    return write_peter(tmp_path / "peter", reviews, {"train": range(16), "validation": [16, 17], "test": [18, 19]})
