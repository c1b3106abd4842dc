"""The config-key reference table of docs/training.md, made from the typed config (src/esrgan/config.py).

Every key of the config dataclasses, with its default as YAML writes it; the meanings are the table's own (one line
each, kept when the table is made again). tests/test_config.py fails when the table and the dataclasses differ, so
after adding, renaming or changing the default of a key, run

    PYTHONPATH=src python3 tools/config_table.py docs/training.md

and write the meaning of a new key into its row (a new row says "TODO").
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from esrgan.config import Config

START = "<!-- config-keys: made by tools/config_table.py from src/esrgan/config.py; meanings kept -->"
END = "<!-- config-keys: end -->"
TODO = "TODO"
_ROW = re.compile(r"^\| `([^`]+)` \| `(.*)` \| (.*) \|$")


def default_text(value: Any) -> str:
    """A default as it would be written in a YAML config (flow style: [0.9, 0.999], null, true, '')."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("...").strip()


def rows(cls: type = Config, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, default) of every key, in the dataclasses' order; sections are walked, not listed."""
    out: list[tuple[str, str]] = []
    instance = cls()
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            out += rows(type(value), f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, default_text(value)))
    return out


def parse(text: str) -> dict[str, tuple[str, str]]:
    """key -> (default, meaning) of the table between START and END in `text` (empty without one)."""
    if START not in text:
        return {}
    block = text.split(START, 1)[1].split(END, 1)[0]
    out = {}
    for line in block.splitlines():
        m = _ROW.match(line.strip())
        if m:
            out[m[1]] = (m[2], m[3])
    return out


def render(meanings: dict[str, str]) -> str:
    lines = [START, "", "| key | default | meaning |", "|---|---|---|"]
    for key, default in rows():
        shown = default.replace("|", "\\|")
        lines.append(f"| `{key}` | `{shown}` | {meanings.get(key) or TODO} |")
    return "\n".join([*lines, "", END])


def update(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{path}: no {START!r} ... {END!r} block to fill")
    meanings = {key: meaning for key, (_, meaning) in parse(text).items() if meaning != TODO}
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(head + render(meanings) + tail, encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: PYTHONPATH=src python3 tools/config_table.py docs/training.md")
    update(Path(sys.argv[1]))
