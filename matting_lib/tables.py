"""Markdown tables: the one writer of the evaluation summary, the sweep report and the benchmarks."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], fmt: Callable[[object], str] = str,
                   align: Sequence[str] = ()) -> str:
    """A GitHub-flavoured Markdown table, one line per row, ending in a newline.

    ``fmt`` turns each cell into text (default ``str``); ``align`` gives a column ``"r"`` for
    right-aligned (``---:``), anything else (or a column past its end) is the default (``---``).
    """
    align = list(align) + [""] * (len(header) - len(align))
    if len(align) != len(header):
        raise ValueError(f"align: {len(align)} entries for {len(header)} columns")
    lines = ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    for row in rows:
        cells = [fmt(v) for v in row]
        if len(cells) != len(header):
            raise ValueError(f"a row has {len(cells)} cells for {len(header)} columns: {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
