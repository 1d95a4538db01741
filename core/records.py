"""Result records: the one versioned JSON schema that every stage writes and `reports/` reads.

A record says what was measured (`metrics`), on what (`model`, `data`), how (`kind`, `config`,
`seed`) and where (`host`, `versions`, `git_commit`), so every number in a report traces back to
a command that reproduces it. Torch-free: hwsim and tvm_backends write records too.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema

from core.errors import RecordError
from core.files import atomic_write, portable_path

SCHEMA_ID = "pfcr.record/1"
KINDS = ("eval", "train", "quantize", "export", "run", "compile", "bench", "simulate", "sensor")
RESULTS_ENV = "PFCR_RESULTS"
# A user's runs go to results/ (ignored by git); the records behind the README are committed
# under benchmarks/results/.
DEFAULT_RESULTS = "results"

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": SCHEMA_ID,
    "type": "object",
    "required": ["schema", "kind", "created", "git_commit", "versions", "seed", "model", "data",
                 "config", "metrics", "host"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "kind": {"enum": list(KINDS)},
        "created": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}"},
        "git_commit": {"type": ["string", "null"]},
        "versions": {
            "type": "object",
            "required": ["python", "torch", "timm", "tvm", "numpy"],
            "additionalProperties": {"type": ["string", "null"]},
        },
        "seed": {"type": ["integer", "null"]},
        "model": {
            "type": "object",
            "required": ["name", "checkpoint_sha256"],
            "properties": {"name": {"type": "string"},
                           "checkpoint_sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"}},
        },
        "data": {
            "type": "object",
            "required": ["name", "split", "size"],
            "properties": {"name": {"type": "string"}, "split": {"type": "string"},
                           "size": {"type": "integer", "minimum": 0}},
        },
        "config": {
            "type": "object",
            "required": ["method"],
            "properties": {"method": {"type": "string"},
                           "w_bits": {"type": ["integer", "null"], "minimum": 2, "maximum": 32},
                           "a_bits": {"type": ["integer", "null"], "minimum": 2, "maximum": 32}},
        },
        # the metrics reports compute with must be numbers (a string top1 broke the report)
        "metrics": {"type": "object", "properties": {
            k: {"type": ["number", "null"]} for k in
            ("top1", "top5", "agreement", "kl", "cosine", "fp_top1", "fake_quant_top1", "seconds", "p50_ms",
             "cycles", "latency_ms", "energy_uj")}},
        "host": {"type": "object", "required": ["cpu", "cores"]},
    },
}

_VERSIONED = {"python": None, "torch": "torch", "timm": "timm", "tvm": "apache-tvm", "numpy": "numpy"}


def versions() -> dict[str, str | None]:
    """Installed versions of the stack, read from package metadata (no heavy imports)."""
    out: dict[str, str | None] = {}
    for key, dist in _VERSIONED.items():
        if dist is None:
            out[key] = platform.python_version()
            continue
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def git_commit() -> str | None:
    """HEAD of the suite's checkout, with '+dirty' when tracked files differ; None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def host() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ}
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
            "system": platform.system(), "env": env}


def make_record(kind: str, *, model: dict, data: dict, config: dict, metrics: dict,
                seed: int | None, extra: dict | None = None) -> dict[str, Any]:
    """A validated record of one measurement; `extra` holds stage-specific fields."""
    model, data, config, extra = (_portable(v) for v in (model, data, config, extra or {}))
    record = {
        "schema": SCHEMA_ID,
        "kind": kind,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "versions": versions(),
        "seed": seed,
        "model": model,
        "data": data,
        "config": config,
        "metrics": metrics,
        "host": host(),
        **extra,
    }
    validate(record)
    return record


def _portable(value: Any) -> Any:
    """Absolute paths inside the working folder or the suite's checkout, made relative (portable_path)."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return portable_path(value)
    return value


def validate(record: Any) -> None:
    """Raise RecordError naming the first field that breaks the schema."""
    try:
        jsonschema.validate(record, SCHEMA)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise RecordError(f"result record breaks {SCHEMA_ID} at {where}: {err.message}") from None


def results_dir(path: str | os.PathLike | None = None) -> Path:
    """Where records go: the given path, else $PFCR_RESULTS, else ./results."""
    return Path(path or os.environ.get(RESULTS_ENV, DEFAULT_RESULTS))


def record_name(record: dict) -> str:
    """A stable file name: one file per (kind, model, data, config, seed), rewritten on a rerun."""
    cfg = record["config"]
    parts = [record["kind"], record["model"]["name"], Path(record["data"]["name"]).name, record["data"]["split"],
             cfg["method"]]
    if cfg.get("w_bits") is not None or cfg.get("a_bits") is not None:
        parts.append(f"w{cfg.get('w_bits')}a{cfg.get('a_bits')}")
    if cfg.get("tag"):
        parts.append(str(cfg["tag"]))
    parts.append(f"seed{record['seed']}")
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(parts)) + ".json"


def distinct_record(record: dict[str, Any], directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """`record`, with a short digest added to its config's tag when the record file of its name
    already holds a measurement of another artifact (a record with another `artifact` path: another
    program, quantized model or program output), so that the earlier record is kept, not silently
    replaced. A rerun on the same artifact keeps the name (and replaces its own record); the digest
    is the first 8 hex of the sha256 of the artifact's path, stable across reruns."""
    artifact = record.get("artifact")
    path = results_dir(directory) / record_name(record)
    if not artifact or not path.is_file():
        return record
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return record  # unreadable: nothing worth keeping
    if not isinstance(old, dict) or not old.get("artifact") or _same_path(old["artifact"], artifact):
        return record
    digest = hashlib.sha256(portable_path(os.path.abspath(artifact)).encode()).hexdigest()[:8]
    tag = record["config"].get("tag")
    return {**record, "config": {**record["config"], "tag": f"{tag}-a{digest}" if tag else f"a{digest}"}}


def _same_path(a: str, b: str) -> bool:
    return portable_path(os.path.abspath(a)) == portable_path(os.path.abspath(b))


PARTIAL_SUFFIX = ".partial.json"


def is_complete(record: dict) -> bool:
    """False for a record of an interrupted or failed measurement: marked `"partial": true` by
    write_record, or whose metrics say `"complete": false` (a bench stopped early)."""
    metrics = record.get("metrics")
    return record.get("partial") is not True and not (isinstance(metrics, dict) and metrics.get("complete") is False)


def _complete_on_disk(path: Path) -> bool:
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # unreadable or not JSON: nothing worth keeping
    return isinstance(old, dict) and "schema" in old and is_complete(old)


def write_record(record: dict, directory: str | os.PathLike | None = None, *, complete: bool = True,
                 distinct: bool = False) -> Path:
    """Validate and atomically write `record`; returns its path. With `distinct`, a record of
    another artifact never takes the name of an earlier one (`distinct_record`).

    A complete record is never replaced by an incomplete one: a record written with
    `complete=False` (or that `is_complete` finds incomplete) is marked `"partial": true`, and when
    a complete record of the same name exists it goes beside it as NAME.partial.json instead. A
    complete record removes a stale NAME.partial.json that it supersedes.
    """
    if distinct:
        record = distinct_record(record, directory)
    validate(record)
    path = results_dir(directory) / record_name(record)
    partial_path = path.with_name(path.name.removesuffix(".json") + PARTIAL_SUFFIX)
    if complete and is_complete(record):
        out = atomic_write(path, json.dumps(record, indent=1) + "\n")
        partial_path.unlink(missing_ok=True)
        return out
    record = {**record, "partial": True}
    if path.exists() and _complete_on_disk(path):
        path = partial_path
    return atomic_write(path, json.dumps(record, indent=1) + "\n")


def read_records(directory: str | os.PathLike | None = None) -> list[dict]:
    """Every record under `directory`, each with its file path in `_path`.

    JSON that does not claim to be a record (no "schema" key: job lists, artifact metadata) is
    skipped, with a warning when it looks like one (it has "kind" and "metrics"); a file that
    claims to be one and breaks the schema, or is not UTF-8 JSON, is an error naming it.
    """
    out = []
    for path in sorted(results_dir(directory).rglob("*.json")):
        if path.name.startswith("."):
            continue  # state and temporary files, not records
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not (isinstance(record, dict) and "schema" in record):
                if isinstance(record, dict) and {"kind", "metrics"} <= set(record):
                    print(f"warning: {path} looks like a result record but has no \"schema\" key: skipped; "
                          f"add \"schema\": \"{SCHEMA_ID}\" if it is one", file=sys.stderr)
                continue
            validate(record)
        except UnicodeDecodeError as err:
            raise RecordError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); fix or remove the file"
                              ) from None
        except (json.JSONDecodeError, RecordError) as err:
            raise RecordError(f"{path}: {err}; fix or remove the file") from None
        out.append({**record, "_path": str(path)})
    return out
