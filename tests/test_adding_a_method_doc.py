"""docs/adding-a-method.md against the code: each code block quotes the file it names (every line it shows is in that
file), the members table lists exactly the public members of Method, and every path the page names exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from explainrec.methods.base import Method

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "explainrec"
PAGE = (REPO / "docs" / "adding-a-method.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE, flags=re.S)


def _source(block: str) -> tuple[str, list[str]]:
    first, *rest = block.splitlines()
    assert first.startswith("# "), f"a code block of the page must open with '# <file it quotes>': {first!r}"
    return first[2:].strip(), rest


@pytest.mark.parametrize("block", BLOCKS, ids=[_source(b)[0] for b in BLOCKS])
def test_each_code_block_quotes_its_file(block):
    name, lines = _source(block)
    file = (PKG / name).resolve()
    assert file.is_file(), name
    source = {line.strip() for line in file.read_text(encoding="utf-8").splitlines()}
    missing = [line for line in lines if line.strip() and line.strip() != "..." and line.strip() not in source]
    assert not missing, f"{name} no longer holds:\n" + "\n".join(missing)


def _table_members() -> set[str]:
    table = PAGE.split("The members the rest of the toolkit reads", 1)[1].split("\n\n", 2)[1]
    names = set()
    for row in table.splitlines()[2:]:
        first = row.split("|")[1]
        names.update(re.findall(r"`([A-Za-z_]+)", first))
    return names


def test_the_members_table_lists_exactly_what_a_method_has():
    listed = _table_members()
    public = {n for n in [*dir(Method), *Method.__annotations__] if not n.startswith("_")}  # ClassVars declared only
    assert listed - public == set(), "listed but not a member of Method"
    assert public - listed == set(), "a member of Method the page does not list"


def _paths() -> set[str]:
    found = set(re.findall(r"`([\w./-]+(?:\.py|\.yaml|/))`", PAGE))
    return {p for p in found if not p.startswith(("RUN/", "OUT/", "/"))}


@pytest.mark.parametrize("path", sorted(_paths()))
def test_every_path_the_page_names_exists(path):
    if "/" not in path.rstrip("/"):  # a bare file name: somewhere in the package
        assert any(PKG.rglob(path)), path
        return
    candidates = [REPO / path, REPO / "src" / path, PKG / path, PKG / "methods" / path]
    assert any(c.exists() for c in candidates), path
