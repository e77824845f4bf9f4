"""``python -m monitoring.dashboards [--check]``: write (or check) the committed dashboard JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from monitoring.dashboards.build import DASHBOARDS, render

OUT = Path(__file__).resolve().parent.parent / "grafana" / "dashboards"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.dashboards", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if a committed file is stale")
    args = parser.parse_args(argv)
    stale = []
    for name in DASHBOARDS:
        path, text = OUT / name, render(name)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    for name in stale:
        print(f"{OUT / name} is stale: run `make dashboards`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
