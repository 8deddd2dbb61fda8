"""A small table that renders as aligned text for the terminal and as Markdown for files."""

from __future__ import annotations

from dataclasses import dataclass, field


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

        def line(cells: list[str]) -> str:
            first, *rest = cells
            aligned = [first.ljust(widths[0])]
            aligned += [cell.rjust(w) for cell, w in zip(rest, widths[1:], strict=True)]
            return "  ".join(aligned).rstrip()

        out = [self.title, line(self.headers), line(["-" * w for w in widths])]
        out += [line(row) for row in self.rows]
        out += self.notes
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"#### {self.title}", ""]
        out.append("| " + " | ".join(self.headers) + " |")
        out.append("|" + "|".join([":---"] + ["---:"] * (len(self.headers) - 1)) + "|")
        out += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {note}" for note in self.notes]
        return "\n".join(out)
