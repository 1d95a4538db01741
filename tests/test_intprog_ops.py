"""The op table covers every op each executor knows; the interval proof holds for random inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwsim.accelerator.config import UNITS, load_config
from hwsim.accelerator.execute import Accelerator
from intprog import reference
from intprog.nonlinear import IntSoftmaxLog2
from intprog.ops import OPS, attention_bounds, infer, value_ranges
from intprog.program import Program


def test_the_op_table_covers_every_executor():
    assert set(reference.KERNELS) == set(OPS)
    assert all(spec.unit in ("array", "layout", *UNITS) for spec in OPS.values())  # units the accelerator has
    empty = Program({"name": "x", "shape": [1], "qmin": 0, "qmax": 1}, {"name": "x"})
    assert set(Accelerator(empty, load_config("edge-npu"))._own) <= set(OPS)
    tvm_lower = pytest.importorskip("tvm_backends.lower")
    assert set(tvm_lower.KERNELS) == set(OPS)


def _codes(rng: np.random.Generator, spec: dict, n: int, mode: int) -> np.ndarray:
    """Input codes: uniform, the range's two ends at random, or one constant image per mode."""
    shape, lo, hi = (n, *spec["shape"]), spec["qmin"], spec["qmax"]
    if mode == 0:
        return rng.integers(lo, hi + 1, shape)
    if mode == 1:
        return np.where(rng.random(shape) < 0.5, lo, hi)
    return np.full(shape, rng.integers(lo, hi + 1))


@pytest.mark.parametrize("model, bits", [("vit_fmnist", 3), ("vit_fmnist", 8), ("swin_fmnist", 4)])
def test_every_value_lies_in_its_proven_interval(zoo_program, model, bits):
    program, codes, _ = zoo_program(bits, model)
    ranges = value_ranges(program)
    spec = program.input
    shapes = infer({spec["name"]: ((2, *spec["shape"]), (spec["qmin"], spec["qmax"]))}, program.ops,
                   program.consts)[0]

    def check(name: str, value: np.ndarray) -> None:
        lo, hi = ranges[name]
        assert lo <= value.min() and value.max() <= hi, (name, (value.min(), value.max()), (lo, hi))
        assert value.shape == shapes[name], name

    @settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.integers(0, 2**32 - 1), st.integers(0, 2))
    def random_inputs(seed: int, mode: int) -> None:
        reference.execute(program, _codes(np.random.default_rng(seed), spec, 2, mode), on_value=check)

    random_inputs()
    reference.execute(program, codes[:2], on_value=check)  # real images


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tokens=st.integers(1, 12), window=st.booleans(), bits=st.sampled_from([3, 4, 8]))
def test_attention_and_its_products_stay_in_their_bounds(seed, tokens, window, bits):
    """Adversarial q, k, v (each at an end of its range) through attention: the output in the proven
    interval, the two products within `attention_bounds`."""
    rng = np.random.default_rng(seed)
    qmax = (1 << bits) - 1
    groups = 2 if window else 1
    q, k, v = (np.where(rng.random((1, 2, groups * tokens, 4)) < 0.5, 0, qmax) for _ in range(3))
    sm = IntSoftmaxLog2.build(float(rng.uniform(1e-3, 1.0)) / qmax, bits)
    attrs = {"q_zp": int(rng.integers(0, qmax + 1)), "k_zp": int(rng.integers(0, qmax + 1)),
             "v_zp": int(rng.integers(0, qmax + 1)), "sm_multiplier": sm.multiplier, "sm_shift": sm.shift,
             "bits": bits, "max_code": min(qmax, 15), **({"window": tokens} if window else {})}
    products = []

    def product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = a @ b
        products.append(np.abs(np.cumsum(a[..., :, :, None] * b[..., None, :, :], axis=-2)).max())
        return out

    out = reference.attention([q, k, v], attrs, {}, qk=product, av=product)
    names = {"q": (q.shape, (0, qmax)), "k": (k.shape, (0, qmax)), "v": (v.shape, (0, qmax))}
    op = {"op": "attention", "in": ["q", "k", "v"], "out": "y", "attrs": attrs, "consts": {}}
    lo, hi = infer(names, [op], {})[1]["y"]
    assert lo <= out.min() and out.max() <= hi
    logits, values = attention_bounds([(0, qmax)] * 3, [q.shape] * 3, attrs)
    assert products[0] <= logits and products[1] <= values


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), lo=st.integers(-1000, 1000), width=st.integers(0, 1000))
def test_sums_over_tokens_stay_in_their_bounds(seed, lo, width):
    rng = np.random.default_rng(seed)
    x = rng.integers(lo, lo + width + 1, (2, int(rng.integers(1, 20)), 3))
    x[0] = lo
    x[1] = lo + width  # both ends reached
    op = {"op": "sum_tokens", "in": ["x"], "out": "y", "attrs": {}, "consts": {}}
    out_lo, out_hi = infer({"x": (x.shape, (lo, lo + width))}, [op], {})[1]["y"]
    out = reference.KERNELS["sum_tokens"]([x], {}, {})
    assert out.min() == out_lo and out.max() == out_hi  # the interval is tight


def test_validation_reads_the_table():
    from intprog.program import FORMAT, VERSION, ProgramError, validate

    def graph(op: str, consts: dict) -> dict:
        ops = [{"op": op, "in": ["x", "x", "x"][:OPS[op].inputs], "out": "y", "attrs": {}, "consts": consts}]
        return {"format": FORMAT, "version": VERSION, "input": {"name": "x"}, "output": {"name": "y"}, "ops": ops}

    mask = {"y.mask": np.zeros((1, 2, 2), np.int8)}
    validate(graph("attention", {"mask": "y.mask"}), mask, "f")  # an optional role
    with pytest.raises(ProgramError, match="'mask' it does not take; it takes none"):
        validate(graph("add", {"mask": "y.mask"}), mask, "f")
    with pytest.raises(ProgramError, match="misses its constant 'table'"):
        validate(graph("lut", {}), {}, "f")
