"""`python -m serving.latest RUNS`: the bundle `make serve` serves, or why there is none.

Prints the promoted bundle of RUNS/latest (the run `make run` made last) and exits 0; otherwise exits 1 with a
message that says what happened instead of a traceback: no run yet, or the latest run was not blessed (with the
gate's reasons) and so promoted nothing, and, when an earlier run did promote a bundle, the command that serves
it. Reads the runs' summary.json files only: no KServe, no model, so `make serve` fails fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["NoBundle", "latest_bundle", "main"]


class NoBundle(Exception):
    """There is nothing to serve; the message says why and what to do."""


def _summary(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise NoBundle(f"{path} cannot be read ({type(e).__name__}: {e}): run 'make run' again") from None
    return data if isinstance(data, dict) else {}


def _earlier_bundle(runs: Path, latest_run: Path) -> Path | None:
    """The newest earlier run's bundle that still exists, if any."""
    for summary in sorted(runs.glob("*/summary.json"), reverse=True):
        if summary.parent.resolve() == latest_run.resolve() or summary.parent.name == "latest":
            continue
        bundle = _summary(summary).get("bundle_dir")
        if bundle and Path(bundle).is_dir():
            return Path(bundle)
    return None


def latest_bundle(runs: str | Path) -> Path:
    """The bundle RUNS/latest promoted; NoBundle with the reason when there is none."""
    runs = Path(runs)
    summary_path = runs / "latest" / "summary.json"
    if not summary_path.is_file():
        raise NoBundle(f"{summary_path} not found: run 'make run' first, or set SERVE_BUNDLE=DIR")
    summary = _summary(summary_path)
    bundle = summary.get("bundle_dir")
    if bundle and Path(bundle).is_dir():
        return Path(bundle)
    run = summary.get("run_id") or (runs / "latest").resolve().name
    if bundle:
        why = f"its bundle {bundle} no longer exists"
    elif summary.get("blessed") is False:
        reasons = "".join(f"\n    - {r}" for r in summary.get("blessing_reasons") or [])
        why = f"the gate did not bless its model, so nothing was promoted:{reasons}" if reasons else \
            "the gate did not bless its model, so nothing was promoted"
    else:
        why = "it promoted no model (no bundle_dir in its summary.json)"
    message = f"the latest run ({run}) has nothing to serve: {why}"
    earlier = _earlier_bundle(runs, runs / "latest")
    if earlier is not None:
        message += f"\n  an earlier run promoted {earlier}:\n    make serve SERVE_BUNDLE={earlier}"
    else:
        message += "\n  re-run 'make run' (e.g. another SCALE or OVERRIDES), or set SERVE_BUNDLE=DIR"
    raise NoBundle(message)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m serving.latest RUNS_DIR", file=sys.stderr)
        return 2
    try:
        print(latest_bundle(args[0]))
    except NoBundle as e:
        print(f"make serve: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
