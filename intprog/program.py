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
    # The value after each reconstruction unit but the last, in order (set by the export, not
    # saved): where pfcr.quant.replay cuts the program to run it unit by unit.
    units: list[str] = field(default_factory=list)

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

    def same_computation(self, other: Program) -> bool:
        """Whether `other` computes exactly this: the same input and output, ops and constant
        values (metadata and storage dtypes aside)."""
        def graph(p: Program) -> Any:
            return json.loads(json.dumps({"input": p.input, "output": p.output, "ops": p.ops}))

        return (graph(self) == graph(other) and self.consts.keys() == other.consts.keys()
                and all(np.array_equal(v.astype(np.int64), other.consts[k].astype(np.int64))
                        for k, v in self.consts.items()))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the program; weights below 8 bits are stored packed (see `_pack_weights`)."""
        from safetensors.numpy import save_file

        from core.files import atomic_path

        validate(self.graph(), self.consts, str(path), deep=True)
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

    for i, op in enumerate(graph["ops"]):
        info = op["attrs"].pop("packed_weight", None)
        if info is None:
            continue
        label = _label(i, op)
        key, bits = op["consts"].get("weight"), op["attrs"].get("weight_bits")
        if not _is_int(bits) or not 2 <= bits <= 8:
            raise ProgramError(f"{where}: {label}: attribute 'weight_bits' = {bits!r} of a packed weight is not "
                               "in 2..8; re-export the program with `pfcr export`")
        if (not isinstance(info, dict) or not isinstance(info.get("shape"), list)
                or not all(_is_int(d) and d >= 0 for d in info["shape"]) or not _is_int(info.get("offset"))):
            raise ProgramError(f"{where}: {label}: attribute 'packed_weight' is malformed ({info!r}); it needs a "
                               "shape (list of sizes) and an integer offset: re-export the program")
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
    _check_structure(graph, where)
    _unpack_weights(graph, consts, where)
    validate(graph, consts, where, deep=True)
    meta = graph.get("meta", {})
    if not isinstance(meta, dict):
        raise ProgramError(f"{where}: 'meta' must be an object, got {type(meta).__name__}; re-export the program")
    return Program(graph["input"], graph["output"], graph["ops"], consts, meta)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)


def _label(i: int, op: Any) -> str:
    if not isinstance(op, dict):
        return f"op {i}"
    return f"op {i} ({op.get('op')} {op.get('out')!r})"


_FIX = "re-export the program with `pfcr export` (or undo the hand edit)"


def _check_structure(graph: Any, where: str, deep: bool = True) -> None:
    """The graph's skeleton, before anything indexes into it: format, version, `ops` a list of
    {"op", "in", "out", "attrs", "consts"} objects of the right types, and (deep) the input and
    output specs in full."""
    if not isinstance(graph, dict):
        raise ProgramError(f"{where}: the program graph must be a JSON object, got {type(graph).__name__}; {_FIX}")
    if graph.get("format") != FORMAT:
        raise ProgramError(f"{where} is not an integer program (format {graph.get('format')!r})")
    if graph.get("version") != VERSION:
        raise ProgramError(f"{where} has program version {graph.get('version')!r}; this suite reads version "
                           f"{VERSION}: re-export it with this suite")
    if not isinstance(graph.get("input"), dict) or not isinstance(graph["input"].get("name"), str):
        raise ProgramError(f"{where}: 'input' must be an object with a string 'name'; {_FIX}")
    if not isinstance(graph.get("output"), dict) or not isinstance(graph["output"].get("name"), str):
        raise ProgramError(f"{where}: 'output' must be an object with a string 'name'; {_FIX}")
    _check_ops_list(graph.get("ops"), where)
    if deep:
        _check_specs(graph, where)


def _check_ops_list(ops: Any, where: str) -> None:
    if not isinstance(ops, list):
        raise ProgramError(f"{where}: 'ops' must be a list of op objects, got {type(ops).__name__}; {_FIX}")
    fields = (("op", str), ("in", list), ("out", str), ("attrs", dict), ("consts", dict))
    for i, op in enumerate(ops):
        if not isinstance(op, dict):
            raise ProgramError(f"{where}: op {i} must be an object, got {type(op).__name__}; {_FIX}")
        for key, kind in fields:
            if not isinstance(op.get(key), kind):
                raise ProgramError(f"{where}: {_label(i, op)}: field {key!r} must be a {kind.__name__}, got "
                                   f"{op.get(key)!r}; {_FIX}")
        if not all(isinstance(n, str) for n in op["in"]) or not all(isinstance(k, str) for k in op["consts"].values()):
            raise ProgramError(f"{where}: {_label(i, op)}: 'in' and 'consts' must name values and constants by "
                               f"string; {_FIX}")


def _check_specs(graph: dict, where: str) -> None:
    """The input spec (shape, zero point, range, scale) and the output's scale."""
    spec = graph["input"]
    shape = spec.get("shape")
    if not isinstance(shape, list) or not shape or not all(_is_int(d) and d > 0 for d in shape):
        raise ProgramError(f"{where}: input field 'shape' must be a list of positive sizes, got {shape!r}; {_FIX}")
    for key in ("zero_point", "qmin", "qmax"):
        if not _is_int(spec.get(key)):
            raise ProgramError(f"{where}: input field {key!r} must be an integer, got {spec.get(key)!r}; {_FIX}")
    if spec["qmin"] > spec["qmax"]:
        raise ProgramError(f"{where}: input qmin {spec['qmin']} is above qmax {spec['qmax']}; {_FIX}")
    if not _is_number(spec.get("scale")) or spec["scale"] <= 0:
        raise ProgramError(f"{where}: input field 'scale' must be a positive number, got {spec.get('scale')!r}; "
                           f"{_FIX}")
    out = graph["output"]
    if not _is_number(out.get("scale")) or out["scale"] <= 0:
        raise ProgramError(f"{where}: output field 'scale' must be a positive number, got {out.get('scale')!r}; "
                           f"{_FIX}")


def _rounding_names() -> tuple[str, ...]:
    from intprog.arith import Rounding

    return tuple(r.value for r in Rounding)


_ANY = (None, None)
# The attributes each op kind's kernels read, with their allowed range (None: unbounded); strings
# are checked against their names. Optional ones are checked only when present.
_ATTRS: dict[str, dict[str, tuple[int | None, int | None] | str]] = {
    "patchify": {"patch": (1, None)},
    "linear": {"in_zp": _ANY, "rounding": "rounding", "weight_bits": (2, 8)},
    "requantize": {"rounding": "rounding"},
    "layernorm": {"sqrt_c": (0, None), "eps_term": (0, None), "out_zp": _ANY, "qmin": _ANY, "qmax": _ANY},
    "split_heads": {"start": (0, None), "dim": (1, None), "heads": (1, None)},
    "attention": {"q_zp": _ANY, "k_zp": _ANY, "v_zp": _ANY, "sm_multiplier": (1, (1 << 31) - 1),
                  "sm_shift": (8, 70), "bits": (1, 30), "max_code": (0, 62)},  # sm_shift - 8: a shift of 0..62
    "lut": {"in_bits": (2, 10)},
    "take_token": {"index": _ANY},
}
_OPTIONAL_ATTRS: dict[str, dict[str, tuple[int | None, int | None]]] = {
    "attention": {"window": (0, None), "logit_shift": (0, 30), "codes_per_octave": (1, 16)},
}
_SHIFT_MAX = {"linear": 62, "requantize": 62, "layernorm": 62 - 15}  # layernorm shifts by S + 15 (NORM_FRAC_BITS)
_PER_CHANNEL = {"linear": ("weight_zp", "bias", "multiplier", "shift", "out_zp", "qmin", "qmax", "qmin0", "qmax0"),
                "requantize": ("multiplier", "shift", "out_zp", "qmin", "qmax"),
                "layernorm": ("multiplier", "shift", "sign", "beta_fixed", "qmin0", "qmax0")}


def _check_attrs(kind: str, attrs: dict, label: str, where: str) -> None:
    def check(name: str, rule: tuple | str, value: Any) -> None:
        if rule == "rounding":
            if value not in _rounding_names():
                raise ProgramError(f"{where}: {label}: attribute {name!r} = {value!r} is not one of "
                                   f"{', '.join(_rounding_names())}; {_FIX}")
            return
        lo, hi = rule
        if not _is_int(value):
            raise ProgramError(f"{where}: {label}: attribute {name!r} must be an integer, got {value!r}; {_FIX}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
            raise ProgramError(f"{where}: {label}: attribute {name!r} = {value} is outside {span}; {_FIX}")

    for name, rule in _ATTRS.get(kind, {}).items():
        if name not in attrs:
            raise ProgramError(f"{where}: {label} misses its attribute {name!r}; {_FIX}")
        check(name, rule, attrs[name])
    for name, rule in _OPTIONAL_ATTRS.get(kind, {}).items():
        if attrs.get(name) is not None:
            check(name, rule, attrs[name])
    per_octave = attrs.get("codes_per_octave") if kind == "attention" else None
    if per_octave is not None and per_octave & (per_octave - 1):
        raise ProgramError(f"{where}: {label}: attribute 'codes_per_octave' = {per_octave} is not a power of two "
                           f"(the softmax's codes are its Q8 log shifted right); {_FIX}")


def _check_consts(kind: str, c: dict[str, np.ndarray], attrs: dict, shapes: list[tuple[int, ...]], label: str,
                  where: str) -> None:
    """Constant values and shapes against the op's inputs: what the kernels would otherwise fail on
    deep inside numpy (a transposed weight, a shift no int64 holds, a table of the wrong length)."""
    def bad(what: str) -> ProgramError:
        return ProgramError(f"{where}: {label}: {what}; {_FIX}")

    if "shift" in c and kind in _SHIFT_MAX:
        s = c["shift"]
        if s.size and (int(s.min()) < 0 or int(s.max()) > _SHIFT_MAX[kind]):
            raise bad(f"constant 'shift' holds {int(s.min())}..{int(s.max())}, outside 0..{_SHIFT_MAX[kind]}")
    if "multiplier" in c and kind in _SHIFT_MAX:
        m = c["multiplier"]
        if m.size and (int(m.min()) < 0 or int(m.max()) >= 1 << 31):
            raise bad(f"constant 'multiplier' holds {int(m.min())}..{int(m.max())}, outside 0..2^31-1")
    if "qmin" in c and "qmax" in c:
        try:
            inverted = bool(np.any(c["qmin"].astype(np.int64) > c["qmax"].astype(np.int64)))
        except ValueError:
            inverted = False  # sizes are reported below
        if inverted:
            raise bad("constant 'qmin' is above 'qmax'")
    if kind == "layernorm" and attrs["qmin"] > attrs["qmax"]:
        raise bad(f"attribute 'qmin' {attrs['qmin']} is above 'qmax' {attrs['qmax']}")
    if ("qmin0" in c) != ("qmax0" in c):
        raise bad("token 0's bounds need both constants 'qmin0' and 'qmax0'")
    if "qmin0" in c and c["qmin0"].size == c["qmax0"].size and np.any(c["qmin0"] > c["qmax0"]):
        raise bad("constant 'qmin0' is above 'qmax0'")
    last = shapes[0][-1] if shapes and shapes[0] else None
    if kind == "linear":
        w = c["weight"]
        if w.ndim != 2:
            raise bad(f"constant 'weight' must be 2-D [outputs, inputs], has shape {list(w.shape)}")
        if w.shape[1] != last:
            raise bad(f"constant 'weight' of shape {list(w.shape)} takes {w.shape[1]} inputs but its input has "
                      f"{last} features (a transposed weight?)")
    channels = c["weight"].shape[0] if kind == "linear" else last
    for role in _PER_CHANNEL.get(kind, ()):
        if role in c and c[role].size not in (1, channels):
            raise bad(f"constant {role!r} has {c[role].size} values; it needs 1 or one per channel ({channels})")
    if kind == "lut":
        if c["table"].ndim != 1 or len(c["table"]) != 1 << attrs["in_bits"]:
            raise bad(f"constant 'table' has shape {list(c['table'].shape)}; {attrs['in_bits']}-bit inputs need "
                      f"{1 << attrs['in_bits']} entries")
    if kind == "prepend" and (c["token"].shape[-1:] != (last,) or c["token"].size != last):
        raise bad(f"constant 'token' has shape {list(c['token'].shape)}; the tokens have {last} features")
    if kind == "add_const":
        try:
            fits = np.broadcast_shapes(c["value"].shape, shapes[0]) == shapes[0]
        except ValueError:
            fits = False
        if not fits:
            raise bad(f"constant 'value' of shape {list(c['value'].shape)} does not fit its input "
                      f"{list(shapes[0][1:])}")
    if kind == "gather_tokens":
        idx = c["index"]
        if idx.ndim != 2 or (idx.size and (int(idx.min()) < 0 or int(idx.max()) >= shapes[0][1])):
            raise bad(f"constant 'index' must be 2-D with token numbers in 0..{shapes[0][1] - 1}")


def _check_shapes(kind: str, attrs: dict, c: dict[str, np.ndarray], shapes: list[tuple[int, ...]], label: str,
                  where: str) -> None:
    """Input ranks and sizes each kernel needs (shapes with a batch of 1)."""
    def bad(what: str) -> ProgramError:
        return ProgramError(f"{where}: {label}: {what}; {_FIX}")

    rank = {"patchify": 4, "linear": None, "prepend": 3, "layernorm": None, "split_heads": 3, "attention": 4,
            "merge_heads": 4, "take_token": 3, "gather_tokens": 3, "sum_tokens": 3}.get(kind)
    for s in shapes:
        if rank is not None and len(s) != rank:
            raise bad(f"takes {rank - 1}-D inputs (besides the batch), has one of shape {list(s[1:])}")
        if len(s) < 2:
            raise bad(f"takes inputs of at least one dimension besides the batch, has {list(s[1:])}")
    if kind == "patchify":
        p, (_, _, h, w) = attrs["patch"], shapes[0]
        if h % p or w % p:
            raise bad(f"attribute 'patch' = {p} does not divide the {h}x{w} image")
    elif kind == "add" and shapes[0] != shapes[1]:
        raise bad(f"adds values of different shapes {list(shapes[0][1:])} and {list(shapes[1][1:])}")
    elif kind == "split_heads":
        d = shapes[0][2]
        if attrs["dim"] % attrs["heads"]:
            raise bad(f"attribute 'dim' = {attrs['dim']} is not a multiple of 'heads' = {attrs['heads']}")
        if attrs["start"] + attrs["dim"] > d:
            raise bad(f"attributes 'start' + 'dim' = {attrs['start'] + attrs['dim']} exceed the input's {d} features")
    elif kind == "attention":
        if not shapes[0] == shapes[1] == shapes[2]:
            raise bad(f"q, k and v have different shapes {[list(s[1:]) for s in shapes]}")
        _, heads, n, _ = shapes[0]
        window = attrs.get("window") or n
        if n % window:
            raise bad(f"attribute 'window' = {window} does not divide its {n} tokens")
        if "bias" in c and c["bias"].shape != (heads, window, window):
            raise bad(f"constant 'bias' has shape {list(c['bias'].shape)}, not [{heads}, {window}, {window}]")
        if "bias" in c and attrs.get("logit_shift") is None:
            raise bad("a 'bias' needs the attribute 'logit_shift'")
        if "mask" in c and c["mask"].shape != (n // window, window, window):
            raise bad(f"constant 'mask' has shape {list(c['mask'].shape)}, not [{n // window}, {window}, {window}]")
    elif kind == "take_token":
        n = shapes[0][1]
        if not -n <= attrs["index"] < n:
            raise bad(f"attribute 'index' = {attrs['index']} is outside the {n} tokens")


def validate(graph: dict, consts: dict[str, np.ndarray], where: str, deep: bool = False) -> None:
    """Raise ProgramError naming the first problem: format, version, structure, op kinds
    (`intprog.ops.OPS`), wiring, constants. `deep` (what loading and saving a file do) checks also
    the input spec, each op's attributes (present, integer, in range), its constants' values and
    shapes against its inputs, and the shapes and proven intervals of every value (`intprog.ops`):
    a hand-edited program is refused by op and field, not by a traceback from inside numpy."""
    _check_structure(graph, where, deep)
    spec_in = graph["input"]
    shapes: dict[str, tuple[int, ...]] = {spec_in["name"]: (1, *spec_in["shape"]) if deep else ()}
    ranges: dict[str, tuple[int, int]] = {spec_in["name"]: (spec_in["qmin"], spec_in["qmax"]) if deep else (0, 0)}
    for i, op in enumerate(graph["ops"]):
        kind = op.get("op")
        if kind not in OPS:
            raise ProgramError(f"{where}: op {i} has unknown kind {kind!r}; known: {', '.join(OPS)}")
        spec = OPS[kind]
        if len(op["in"]) != spec.inputs:
            raise ProgramError(f"{where}: op {i} ({kind}) takes {spec.inputs} inputs, has {len(op['in'])}")
        for name in op["in"]:
            if name not in shapes:
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
        if not deep:
            shapes[op["out"]] = ()
            continue
        label = _label(i, op)
        attrs = op["attrs"]
        roles = {role: consts[key] for role, key in op["consts"].items()}
        in_shapes = [shapes[n] for n in op["in"]]
        _check_attrs(kind, attrs, label, where)
        _check_shapes(kind, attrs, roles, in_shapes, label, where)
        _check_consts(kind, roles, attrs, in_shapes, label, where)
        try:
            out_shape = tuple(int(d) for d in spec.shape(in_shapes, attrs, roles))
            lo, hi = spec.interval([ranges[n] for n in op["in"]], in_shapes, attrs, roles)
        except Exception as err:  # a combination the checks above do not name: still by op, not a traceback
            raise ProgramError(f"{where}: {label}: its shapes or values do not fit together "
                               f"({type(err).__name__}: {err}); {_FIX}") from None
        if any(d <= 0 for d in out_shape[1:]):
            raise ProgramError(f"{where}: {label}: computes a value of shape {list(out_shape[1:])}; {_FIX}")
        shapes[op["out"]], ranges[op["out"]] = out_shape, (int(lo), int(hi))
    if graph["output"]["name"] not in shapes:
        raise ProgramError(f"{where}: the output {graph['output']['name']!r} is never computed")
