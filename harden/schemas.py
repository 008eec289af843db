"""Publish the JSON Schema of baseline files: ``python -m harden.schemas DIR``.

Writes ``DIR/baseline.schema.json`` from :func:`harden.baseline.model.json_schema`. The output is
deterministic (sorted keys, two-space indent, trailing newline) so the committed
``docs/baseline.schema.json`` can be compared byte for byte with what the model generates now.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from harden.baseline.model import json_schema
from harden.files import write_atomic

BASELINE_SCHEMA_NAME = "baseline.schema.json"


def render_baseline_schema() -> str:
    """The baseline JSON Schema as text, byte-for-byte stable for one model."""
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """Write every published schema into ``directory`` (created if missing), atomically."""
    path = directory / BASELINE_SCHEMA_NAME
    write_atomic(path, render_baseline_schema().encode("utf-8"))
    return [path]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        sys.stderr.write("usage: python -m harden.schemas DIR\n")
        return 2
    for path in write_schemas(Path(args[0])):
        sys.stderr.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
