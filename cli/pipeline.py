"""The main job: every capability of the suite on the embedded default, stage by stage, resumable.

A stage is a `pfcr` command line. It is skipped when it ran before with the same command line, the
same input files (by sha256) and the same suite code, and every file it produced is still there; the
state lives in <results>/.main-state.json. So an interrupted run resumes, a changed checkpoint reruns
what depends on it, and an updated suite reruns everything.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cli.parts import PARTS
from core.errors import SuiteError
from core.files import atomic_write
from core.models import ZOO, sha256_file
from core.records import results_dir
from core.registry import MainJob, Stage


def stages(results: Path, full: bool, limit: int | None, real: bool = False) -> list[Stage]:
    """The main job's stages in order: each part's, in the registry's order (cli.parts.PARTS)."""
    job = MainJob(results, full, limit, real=real)
    return [stage for part in PARTS for stage in part.main_stages(job)]


PACKAGES = ("core", "intprog", "pfcr", "hwsim", "tvm_backends", "realvit", "reports", "cli")


@functools.cache
def code_digest() -> str:
    """sha256 over the suite's own sources (Python and the accelerator presets), file by file."""
    h = hashlib.sha256()
    for name in PACKAGES:
        root = Path(next(iter(importlib.import_module(name).__path__)))  # a package folder, namespace or not
        for f in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".toml")):
            h.update(f"{name}/{f.relative_to(root).as_posix()}".encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()


def _inputs_digest(argv: list[str]) -> str:
    """sha256 over the command line, the content of every input file it names (plus zoo weights) and
    the suite's code."""
    h = hashlib.sha256(json.dumps(argv).encode())
    h.update(code_digest().encode())
    # Inputs only: the file after --out is what the stage writes.
    files = [Path(a) for i, a in enumerate(argv) if Path(a).is_file() and (i == 0 or argv[i - 1] != "--out")]
    files += [ZOO[a].checkpoint for a in argv if a in ZOO and ZOO[a].checkpoint.exists()]
    for f in files:
        h.update(sha256_file(f).encode())
    return h.hexdigest()


INTERRUPTED = 130


def _read_state(state_path: Path) -> dict:
    try:
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
    except (OSError, ValueError):
        state = {}  # unreadable: every stage reruns, which is always safe
    return state if isinstance(state, dict) else {}


def run_main(args: argparse.Namespace, run_stage: Callable[[list[str]], int | None]) -> int:
    """Run the stages not up to date, in order; 0 when all are done.

    A stage is marked done only when its command returns 0 (or None). A stage that returns another
    status, raises, or is interrupted (Ctrl-C) is not: the job stops there, and the next `pfcr main`
    resumes at that stage. An interrupt returns 130; a failure raises SuiteError naming the stage.
    """
    results = results_dir(args.results)
    state_path = results / ".main-state.json"
    state = _read_state(state_path)
    todo = stages(results, args.full, args.limit, getattr(args, "real", False))
    for i, (title, argv) in enumerate(todo, 1):
        print(f"== stage {i}/{len(todo)}: {title}", flush=True)
        key = _inputs_digest(argv)
        done = state.get(title)
        if not args.rerun and isinstance(done, dict) and done.get("inputs") == key \
                and all(Path(f).exists() for f in done.get("produced", [])):
            print("   up to date (same command, inputs and suite code, outputs present): skipped", flush=True)
            continue
        if state.pop(title, None) is not None:  # running it again: not done until it succeeds
            atomic_write(state_path, json.dumps(state, indent=1))
        where = f"stage {i}/{len(todo)} ({title}: pfcr {' '.join(argv)})"
        resume = "run `pfcr main` again to resume from this stage"
        start = time.time()
        try:
            status = run_stage(argv)
        except KeyboardInterrupt:
            status = INTERRUPTED
        except SystemExit as exit_:  # argparse of a stage's command line
            status = exit_.code if isinstance(exit_.code, int) else 2
        except SuiteError as err:
            raise SuiteError(f"{where} failed: {err}; {resume}") from None
        if status == INTERRUPTED:
            print(f"pfcr main: {where} was interrupted; it is not marked done: {resume}", file=sys.stderr, flush=True)
            return INTERRUPTED
        if status:
            raise SuiteError(f"{where} failed with exit status {status}; {resume}")
        produced = [str(p) for p in results.rglob("*") if p.is_file() and p.stat().st_mtime >= start - 1
                    and p != state_path]
        state[title] = {"inputs": key, "produced": sorted(produced), "seconds": round(time.time() - start, 1)}
        atomic_write(state_path, json.dumps(state, indent=1))
    return 0
