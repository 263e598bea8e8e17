"""Idempotent sections in a model card (README.md): each section sits between HTML markers and is replaced on rewrite."""

from __future__ import annotations

from pathlib import Path


def update_card_section(folder: str | Path, key: str, markdown: str) -> Path:
    """Insert or replace the section `key` of ``folder/README.md``, keeping everything else."""
    path = Path(folder) / "README.md"
    start, end = f"<!-- icegrt:{key} -->", f"<!-- /icegrt:{key} -->"
    block = f"{start}\n{markdown.strip()}\n{end}\n"
    text = path.read_text() if path.is_file() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
