"""Check a suite run against each library timed alone: every selected record is timed again in a fresh
process of its library, by itself, in a plain loop (``worker.py --alone``), and compared with the
suite's median.

    python -m fastconv.benchmarks.alone RESULTS.json [--impl auto pytorch] [-k TEXT] [--tolerance 0.15] [--repeats 3]

Prints one line per record (suite time, alone time, their ratio) and exits 1 when a ratio is
outside 1 +- tolerance: the suite's harness then distorts that library's figures.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass

from . import report
from .cases import case_to_dict, find
from .harness import PLANS, Harness, library_of, missing, time_alone

MIN_SECONDS = 3.0  # a plain loop of about 1 s can sit in the VM's slow state from start to end


@dataclass
class Check:
    """One record: its name, the suite's time and the time alone (seconds)."""
    name: str
    suite_s: float
    alone_s: float

    @property
    def ratio(self) -> float:
        return self.suite_s / self.alone_s


def time_record(record: dict, threads: int, seconds: float) -> float:
    """A record's call timed alone in a fresh process of its library for about `seconds`
    (``harness.time_alone``); a PyTorch training step gets its twin's weights from a fastconv worker
    that exits before the timing."""
    info = record["extra_info"]
    case = find(info["suite"], info["case"])
    request = {"suite": info["suite"], "case": case_to_dict(case), "pass": info["pass"], "impl": info["impl"],
               "dtype": info["dtype"], "device": info.get("device", "cpu")}
    exporter = Harness(threads, PLANS["tiny"])
    try:
        if info["suite"].endswith("train_step") and info["impl"] == "pytorch":
            model = exporter.model(case, info["dtype"])
            exporter.workers.pop("fastconv").close()
            request["model"] = {"spec": model["spec"], "weights": model["weights"]}
        return time_alone(library_of(info["impl"]), request, threads, seconds)
    finally:
        exporter.close()


def check(results: dict, impls: tuple[str, ...] = ("auto", "pytorch"), keyword: str = "",
          seconds: float | None = None, repeats: int = 1) -> list[Check]:
    """Time the records of `results` (a loaded results.json) whose impl is in `impls` and whose name contains
    `keyword` alone, each for about as long as the suite timed it, at least MIN_SECONDS (or `seconds`); with
    `repeats` > 1 each
    record is timed alone that many times, round-robin over the records (a fresh process each time), and
    the median kept."""
    threads = results["machine_info"]["fastconv"]["threads"]
    records = [r for r in results["benchmarks"]
               if r["extra_info"]["impl"] in impls and keyword in r["name"] and r["extra_info"].get("scale", 1.0) == 1.0
               and not missing(library_of(r["extra_info"]["impl"]))]
    alone: dict[str, list[float]] = {r["name"]: [] for r in records}
    for _ in range(repeats):
        for r in records:
            budget = seconds if seconds is not None else min(30.0, max(MIN_SECONDS, r["stats"]["total"]))
            alone[r["name"]].append(time_record(r, threads, budget))
    return [Check(r["name"], r["stats"]["median"], statistics.median(alone[r["name"]])) for r in records]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastconv.benchmarks.alone", description=__doc__.split("\n")[0])
    parser.add_argument("results", help="a results.json written by fastconv bench")
    parser.add_argument("--impl", nargs="+", default=["auto", "pytorch"], help="implementations to check")
    parser.add_argument("-k", dest="keyword", default="", help="only records whose name contains this text")
    parser.add_argument("--tolerance", type=float, default=0.15, help="allowed |suite/alone - 1| (default 0.15)")
    parser.add_argument("--repeats", type=int, default=1, help="time each record alone this many times, "
                                                               "round-robin, and keep the median (default 1)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    checks = check(report.load(args.results), tuple(args.impl), args.keyword, repeats=args.repeats)
    bad = [c for c in checks if abs(c.ratio - 1) > args.tolerance]
    for c in checks:
        flag = "  OUTSIDE" if c in bad else ""
        print(f"{c.name:<60} suite {c.suite_s * 1e3:10.4f} ms  alone {c.alone_s * 1e3:10.4f} ms  "
              f"suite/alone {c.ratio:5.2f}{flag}")
    if checks:
        ratios = [c.ratio for c in checks]
        print(f"{len(checks)} records: suite/alone median {statistics.median(ratios):.3f}, range "
              f"{min(ratios):.3f}-{max(ratios):.3f}; {len(bad)} outside 1 +- {args.tolerance:g}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
