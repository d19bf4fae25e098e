"""The ``fastconv`` command line: ``demo``, ``bench``, ``report``, ``compare``."""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

BENCH_EXTRA = 'the benchmark tools are missing: pip install -e ".[bench]"'


class _ProgressBar:
    """A pytest plugin that advances a tqdm bar (on stderr) as benchmarks finish."""

    def __init__(self, tqdm) -> None:
        self.tqdm = tqdm
        self.bar = None

    def pytest_collection_finish(self, session) -> None:
        self.bar = self.tqdm(total=len(session.items), desc="benchmarks", unit="bench", file=sys.stderr)

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and report.skipped):
            self.bar.set_postfix_str(report.nodeid.rsplit("::", 1)[-1][:48], refresh=False)
            self.bar.update(1)
            if self.bar.n >= self.bar.total:  # close before pytest-benchmark prints its summary
                self.bar.close()

    def pytest_sessionfinish(self) -> None:
        if self.bar is not None:
            self.bar.close()


def bench(size: str, dtype: str, out: Path | None) -> int:
    """Run the benchmark suite; write results.json, pytest.log and the report into `out`."""
    try:
        import pytest
        import pytest_benchmark  # noqa: F401
        from tqdm import tqdm
    except ImportError:
        print(f"fastconv bench: {BENCH_EXTRA}", file=sys.stderr)
        return 2
    from . import benchmarks
    from .benchmarks import report

    out = out or Path("bench-results") / f"{size}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.json"
    suite = Path(benchmarks.__file__).parent
    args = [str(suite), f"--rootdir={suite}", "-p", "no:cacheprovider", "-q", "--benchmark-sort=name",
            f"--benchmark-json={results}", f"--fc-size={size}", f"--fc-dtype={dtype}"]
    print(f"fastconv bench: {size} suite, {dtype}; pytest output in {out / 'pytest.log'}", file=sys.stderr)
    with open(out / "pytest.log", "w") as log, contextlib.redirect_stdout(log):
        code = pytest.main(args, plugins=[_ProgressBar(tqdm)])
    if code != 0:
        print(f"fastconv bench: the suite failed (pytest exit {int(code)}); see {out / 'pytest.log'}",
              file=sys.stderr)
        return int(code)
    written = report.render(results, out)
    print(f"fastconv bench: wrote {results} and {', '.join(p.name for p in written)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastconv", description="Convolution engine with compiled kernels.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run every conv2d algorithm on a few layers: agreement and time")
    demo.add_argument("--repeat", type=int, default=5, help="timed runs per algorithm (median reported)")

    run = commands.add_parser("bench", help="run the benchmark suite and write results and a report")
    run.add_argument("--quick", action="store_const", const="quick", dest="size",
                     help="a few-minute subset (same as --size quick)")
    run.add_argument("--size", choices=["tiny", "quick", "full"],
                     help="tiny: one small case per op; quick: a subset; full: every case (default)")
    run.set_defaults(size="full")
    run.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    run.add_argument("--device", choices=["cpu"], default="cpu", help="where to run (cpu)")
    run.add_argument("--out", type=Path, help="output folder (default: bench-results/SIZE-TIMESTAMP)")

    rep = commands.add_parser("report", help="re-render the report of a results.json")
    rep.add_argument("results", type=Path)
    rep.add_argument("--out", type=Path, help="output folder (default: the results file's folder)")

    cmp = commands.add_parser("compare", help="compare two results.json; exit 1 on a regression")
    cmp.add_argument("old", type=Path)
    cmp.add_argument("new", type=Path)
    cmp.add_argument("--threshold", type=float, default=0.25,
                     help="a fastconv time more than this fraction slower is a regression (default 0.25)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        from . import demo as demo_module
        demo_module.run(args.repeat)
        return 0
    if args.command == "bench":
        return bench(args.size, args.dtype, args.out)

    from .benchmarks import report
    for path in [args.results] if args.command == "report" else [args.old, args.new]:
        if not path.is_file():
            parser.error(f"no such results file: {path}")
    try:
        if args.command == "report":
            written = report.render(args.results, args.out or args.results.parent)
            print("wrote " + ", ".join(str(p) for p in written))
            return 0
        if args.threshold <= 0:
            parser.error("--threshold must be positive")
        text, regressions = report.compare(report.load(args.old), report.load(args.new), args.threshold)
    except ValueError as error:
        print(f"fastconv {args.command}: {error}", file=sys.stderr)
        return 2
    print(text)
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
