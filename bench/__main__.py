"""`make bench`: run every bench/bench_*.py module, print a table, write bench/results.json."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys
from pathlib import Path

from bench.common import Result, table


def main() -> int:
    only = sys.argv[1:]
    results: list[Result] = []
    here = Path(__file__).parent
    for mod in sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_")
    ):
        if only and not any(o in mod for o in only):
            continue
        print(f"running {mod} ...", file=sys.stderr, flush=True)
        module = importlib.import_module(f"bench.{mod}")
        results.extend(module.run())
    print(table(results))
    out = here / "results.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n")
    os.replace(tmp, out)
    print(f"\nwritten {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
