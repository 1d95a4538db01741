"""The integer program as data: a list of ops over named integer tensors, and its file format.

File: one safetensors file; the tensors are the program's integer constants (weights below 8 bits
packed, two's complement, little-endian), the metadata entry "program" holds the JSON graph
{"format", "version", "input", "output", "ops"}. Each op is
{"op": kind, "in": [value names], "out": value name, "attrs": {...}, "consts": {role: tensor}}.
Loading validates the version, the op kinds, the wiring, and every constant's presence and dtype.
No pickle anywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import SuiteError
from intprog.ops import OPS  # the op table validation reads (re-exported here)

FORMAT = "intprog"
VERSION = 2  # 2: LayerNorm adds beta before its one rounding (beta_fixed)
_INT_DTYPES = (np.int8, np.uint8, np.int16, np.int32, np.int64)


class ProgramError(SuiteError, ValueError):
    """A malformed integer program file; the message names the file and what is wrong (a SuiteError,
    so the command line prints it without a traceback)."""


@dataclass
class Program:
    input: dict[str, Any]  # name, shape (without batch), zero_point, scale (metadata only), bits
    output: dict[str, Any]  # name, scale (metadata only)
    ops: list[dict[str, Any]] = field(default_factory=list)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, op: str, inputs: list[str], out: str, attrs: dict | None = None,
            consts: dict[str, np.ndarray] | None = None) -> str:
        """Append an op; its constants are stored under '<out>.<role>'. Returns `out`."""
        refs = {}
        for role, value in (consts or {}).items():
            key = f"{out}.{role}"
            self.consts[key] = np.ascontiguousarray(value)
            refs[role] = key
        self.ops.append({"op": op, "in": inputs, "out": out, "attrs": attrs or {}, "consts": refs})
        return out

    def input_codes(self, images: Any) -> np.ndarray:
        """Images in the model's float input space (numpy or a CPU tensor) -> the program's input
        codes: divided by the scale in float64, rounded half to even, offset, clamped. A sensor's
        ISP produces the same codes directly (hwsim.sensor.isp.input_code_lut)."""
        return input_codes(self.input, images)

    def weight_bytes(self) -> dict[str, int]:
        """Storage of the linear weights: packed at their bit width, and the FP32 model's."""
        packed = fp32 = 0
        for op in self.ops:
            if op["op"] == "linear":
                w = self.consts[op["consts"]["weight"]]
                packed += (w.size * op["attrs"]["weight_bits"] + 7) // 8
                fp32 += 4 * w.size
        return {"weight_bytes_packed": packed, "weight_bytes_fp32": fp32}

    def graph(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "input": self.input, "output": self.output,
                "ops": self.ops, "meta": self.meta}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the program; weights below 8 bits are stored packed (see `_pack_weights`)."""
        from safetensors.numpy import save_file

        from core.files import atomic_path

        validate(self.graph(), self.consts, str(path))
        graph, consts = _pack_weights(self.graph(), self.consts)
        with atomic_path(path) as tmp:
            save_file(consts, str(tmp), metadata={"program": json.dumps(graph)})
        return Path(path)


def input_codes(spec: dict[str, Any], images: Any) -> np.ndarray:
    """`Program.input_codes` for an input spec {scale, zero_point, qmin, qmax}."""
    codes = np.round(np.asarray(images, dtype=np.float64) / spec["scale"]) + spec["zero_point"]
    return np.clip(codes, spec["qmin"], spec["qmax"]).astype(np.int64)


def _pack_weights(graph: dict, consts: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """Linear weights of b < 8 bits -> packed bytes (intprog.arith.pack, shifted to signed), with
    the shape and offset in op["attrs"]["packed_weight"]."""
    from intprog.arith import pack

    graph, consts = json.loads(json.dumps(graph)), dict(consts)
    for op in graph["ops"]:
        bits = op["attrs"].get("weight_bits", 8)
        if op["op"] != "linear" or bits >= 8:
            continue
        key = op["consts"]["weight"]
        w = consts[key].astype(np.int64)
        offset = 1 << (bits - 1) if w.min(initial=0) >= 0 else 0  # unsigned codes are stored shifted
        consts[key] = pack(w - offset, bits)
        op["attrs"]["packed_weight"] = {"shape": list(w.shape), "offset": offset, "dtype": str(w.dtype)}
    return graph, consts


def _unpack_weights(graph: dict, consts: dict[str, np.ndarray], where: str) -> None:
    from intprog.arith import unpack

    for op in graph["ops"]:
        info = op["attrs"].pop("packed_weight", None)
        if info is None:
            continue
        key, bits = op["consts"]["weight"], op["attrs"]["weight_bits"]
        count = int(np.prod(info["shape"]))
        if key not in consts or consts[key].size != (count * bits + 7) // 8:
            raise ProgramError(f"{where}: packed weight {key} does not hold {count} values of {bits} bits")
        values = unpack(consts[key], bits, count).astype(np.int64) + info["offset"]
        consts[key] = values.reshape(info["shape"]).astype(np.uint8 if info["offset"] else np.int8)


def load(path: str | os.PathLike) -> Program:
    """Read and validate a program file."""
    from safetensors import safe_open

    where = str(path)
    if not Path(path).is_file():
        raise ProgramError(f"integer program {where} does not exist; create it with `pfcr export`")
    try:
        with safe_open(where, framework="numpy") as f:
            header = (f.metadata() or {}).get("program")
            consts = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for damaged files
        raise ProgramError(f"integer program {where} is not a readable safetensors file ({err})") from None
    if header is None:
        raise ProgramError(f"{where} holds no integer program (no 'program' metadata); export one with `pfcr export`")
    try:
        graph = json.loads(header)
    except json.JSONDecodeError as err:
        raise ProgramError(f"{where}: the program graph is not valid JSON ({err})") from None
    if graph.get("version") == VERSION and isinstance(graph.get("ops"), list):
        _unpack_weights(graph, consts, where)
    validate(graph, consts, where)
    return Program(graph["input"], graph["output"], graph["ops"], consts, graph.get("meta", {}))


def validate(graph: dict, consts: dict[str, np.ndarray], where: str) -> None:
    """Raise ProgramError naming the first problem: format, version, op kinds (`intprog.ops.OPS`),
    wiring, constants."""
    if graph.get("format") != FORMAT:
        raise ProgramError(f"{where} is not an integer program (format {graph.get('format')!r})")
    if graph.get("version") != VERSION:
        raise ProgramError(f"{where} has program version {graph.get('version')!r}; this suite reads version "
                           f"{VERSION}: re-export it with this suite")
    defined = {graph["input"]["name"]}
    for i, op in enumerate(graph["ops"]):
        kind = op.get("op")
        if kind not in OPS:
            raise ProgramError(f"{where}: op {i} has unknown kind {kind!r}; known: {', '.join(OPS)}")
        spec = OPS[kind]
        if len(op["in"]) != spec.inputs:
            raise ProgramError(f"{where}: op {i} ({kind}) takes {spec.inputs} inputs, has {len(op['in'])}")
        for name in op["in"]:
            if name not in defined:
                raise ProgramError(f"{where}: op {i} ({kind}) reads {name!r} before it is computed")
        for role in op["consts"]:
            if role not in spec.consts + spec.optional:
                raise ProgramError(f"{where}: op {i} ({kind}) has a constant {role!r} it does not take; it takes "
                                   f"{', '.join(spec.consts + spec.optional) or 'none'}")
        for role in dict.fromkeys([*spec.consts, *op["consts"]]):
            key = op["consts"].get(role)
            if key not in consts:
                raise ProgramError(f"{where}: op {i} ({kind}) misses its constant {role!r} ({key})")
            if consts[key].dtype not in _INT_DTYPES:
                raise ProgramError(f"{where}: constant {key} has dtype {consts[key].dtype}; "
                                   "programs hold integers only")
        defined.add(op["out"])
    if graph["output"]["name"] not in defined:
        raise ProgramError(f"{where}: the output {graph['output']['name']!r} is never computed")
