"""Export of a quantized ViT to the integer program, the file format, and the reference executor."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from core import models
from intprog import reference
from intprog.program import ProgramError, load
from pfcr.export import export_program
from pfcr.quant.model import QuantConfig
from pfcr.quantize import QuantizeConfig, quantize
from tests.test_models import TINY


def _smooth(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.randn(n, 1, 7, 7, generator=g), size=28, mode="bilinear")


@pytest.fixture(scope="module")
def exported():
    torch.manual_seed(0)
    arch, kw = TINY["vit"]
    fp = models.build(arch, **kw).eval()
    x = _smooth(64)
    qm, _ = quantize(fp, x, QuantizeConfig(method="rtn", quant=QuantConfig(8, 8), init_size=64))
    return qm, export_program(qm, x), x


def test_integer_program_follows_the_fake_quant_model(exported):
    qm, program, _ = exported
    x = _smooth(32, seed=1)
    ints = reference.run(program, program.input_codes(x))
    logits = ints * program.output["scale"]
    with torch.no_grad():
        fake = qm(x).double().numpy()
    span = fake.max() - fake.min()
    assert np.abs(logits - fake).max() < 0.05 * span  # W8A8: integer kernels within a few percent
    assert (logits.argmax(1) == fake.argmax(1)).mean() >= 0.9


def test_program_round_trip(tmp_path, exported):
    _, program, x = exported
    path = program.save(tmp_path / "p.safetensors")
    again = load(path)
    assert again.ops == program.ops and set(again.consts) == set(program.consts)
    codes = program.input_codes(x[:4])
    assert np.array_equal(reference.run(again, codes), reference.run(program, codes))
    stats = {}
    reference.run(again, codes, stats)
    assert stats["peak_activation_bytes"] > 0
    sizes = program.weight_bytes()
    assert sizes["weight_bytes_packed"] * 4 == sizes["weight_bytes_fp32"]  # 8-bit weights: a quarter


def _write(tmp_path, program, graph_edit=None, const_edit=None):
    graph = json.loads(json.dumps(program.graph()))
    consts = dict(program.consts)
    if graph_edit:
        graph_edit(graph)
    if const_edit:
        const_edit(consts)
    path = tmp_path / "bad.safetensors"
    save_file(consts, str(path), metadata={"program": json.dumps(graph)})
    return path


@pytest.mark.parametrize(
    "graph_edit, const_edit, message",
    [
        (lambda g: g.update(version=99), None, "version 99"),
        (lambda g: g.update(format="onnx"), None, "not an integer program"),
        (lambda g: g["ops"][1].update(op="conv3d"), None, "unknown kind 'conv3d'"),
        (lambda g: g["ops"][1].update({"in": ["nowhere"]}), None, "reads 'nowhere' before it is computed"),
        (lambda g: g["output"].update(name="ghost"), None, "never computed"),
        (None, lambda c: c.pop("embed.weight"), "misses its constant 'weight'"),
        (None, lambda c: c.update({"embed.bias": np.zeros(3, np.float32)}), "integers only"),
    ],
)
def test_malformed_programs(tmp_path, exported, graph_edit, const_edit, message):
    path = _write(tmp_path, exported[1], graph_edit, const_edit)
    with pytest.raises(ProgramError, match=message):
        load(path)


def _op(graph, kind, nth=0):
    return [op for op in graph["ops"] if op["op"] == kind][nth]


@pytest.mark.parametrize(
    "graph_edit, const_edit, message",
    [
        # a shift of 99, as an attribute and as a constant
        (lambda g: _op(g, "attention")["attrs"].update(sm_shift=99), None,
         r"op \d+ \(attention 'b0.attn'\): attribute 'sm_shift' = 99 is outside 8..70"),
        (None, lambda c: c.update({"b0.qkv.shift": np.full_like(c["b0.qkv.shift"], 99)}),
         r"\(linear 'b0.qkv'\): constant 'shift' holds 99..99, outside 0..62"),
        # a missing attribute
        (lambda g: _op(g, "linear")["attrs"].pop("in_zp"), None, r"\(linear 'embed'\) misses its attribute 'in_zp'"),
        (lambda g: _op(g, "attention")["attrs"].update(bits="4"), None, "attribute 'bits' must be an integer"),
        (lambda g: _op(g, "attention")["attrs"].update(codes_per_octave=3), None,
         r"\(attention 'b0.attn'\): attribute 'codes_per_octave' = 3 is not a power of two"),
        # a transposed weight
        (None, lambda c: c.update({"b0.fc1.weight": np.ascontiguousarray(c["b0.fc1.weight"].T)}),
         r"\(linear 'b0.fc1'\): constant 'weight' of shape \[16, 64\] takes 64 inputs but its input has 16"),
        # a negative head dimension
        (lambda g: _op(g, "split_heads")["attrs"].update(dim=-16), None,
         r"\(split_heads 'b0.q'\): attribute 'dim' = -16 is outside 1..inf"),
        (lambda g: _op(g, "split_heads")["attrs"].update(heads=3), None, "'dim' = 16 is not a multiple of 'heads' = 3"),
        # `ops` not a list, an op not an object, fields of the wrong type
        (lambda g: g.update(ops={"0": g["ops"][0]}), None, "'ops' must be a list of op objects, got dict"),
        (lambda g: g["ops"].__setitem__(2, "linear"), None, "op 2 must be an object, got str"),
        (lambda g: g["ops"][2].update(attrs=[]), None, r"op 2 \(\w+ '[\w.]+'\): field 'attrs' must be a dict"),
        (lambda g: g["input"].update(shape=[1, -28, 28]), None, "input field 'shape' must be a list of positive"),
        (lambda g: g["output"].pop("scale"), None, "output field 'scale' must be a positive number"),
        (lambda g: _op(g, "patchify")["attrs"].update(patch=5), None, "'patch' = 5 does not divide the 28x28"),
        (lambda g: _op(g, "take_token")["attrs"].update(index=40), None, "'index' = 40 is outside the 17 tokens"),
        (None, lambda c: c.update({"b0.gelu.table": c["b0.gelu.table"][:100]}), "8-bit inputs need 256 entries"),
        (lambda g: g.__setitem__("meta", [1]), None, "'meta' must be an object"),
    ],
)
def test_hand_edited_programs_are_refused_by_op_and_field(tmp_path, exported, graph_edit, const_edit, message):
    """A hand-edited program is a ProgramError naming the op and the field when it is loaded, never a
    numpy traceback when it runs (tests/test_reliability_cli.py runs one through `pfcr run`)."""
    path = _write(tmp_path, exported[1], graph_edit, const_edit)
    with pytest.raises(ProgramError, match=message):
        load(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(ProgramError, match="does not exist"):
        load(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ProgramError, match="not a readable"):
        load(tmp_path / "junk.safetensors")
    save_file({"w": np.zeros(1, np.int8)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ProgramError, match="holds no integer program"):
        load(tmp_path / "plain.safetensors")


@pytest.mark.parametrize("bits", [8, 4])
def test_swin_program_follows_its_fake_quant_model(bits):
    """Shifted windows, relative position bias, patch merging and the pooled head, in integers."""
    torch.manual_seed(0)
    arch, kw = TINY["swin"]
    fp = models.build(arch, **{**kw, "depths": (2, 1)}).eval()  # block 2 of stage 1 is shifted
    x = _smooth(32)
    qm, _ = quantize(fp, x, QuantizeConfig(method="rtn", quant=QuantConfig(bits, bits), init_size=32))
    program = export_program(qm, x)
    kinds = {op["op"] for op in program.ops}
    assert {"gather_tokens", "sum_tokens"} <= kinds
    assert any("mask" in op["consts"] for op in program.ops)  # a shifted window was exported
    test = _smooth(16, seed=1)
    logits = reference.run(program, program.input_codes(test)) * program.output["scale"]
    with torch.no_grad():
        fake = qm(test).double().numpy()
    # measured 0.0044 (W8) and 0.072 (W4) of the span; an inverted shift mask gives 0.0117 at W8
    assert np.abs(logits - fake).max() < (0.008 if bits == 8 else 0.15) * (fake.max() - fake.min())


def test_reference_takes_integer_codes_only(exported):
    with pytest.raises(TypeError, match="integer input codes"):
        reference.run(exported[1], np.zeros((1, 1, 28, 28)))


def test_export_and_run_commands(tmp_path, results, capsys):
    """quantize -> export -> run for a user's timm model and folder, each writing its record."""
    from cli.main import main
    from tests.conftest import image_folder, user_model

    ckpt, kwargs = user_model(tmp_path, num_classes=2)
    for split in ("train", "val"):
        image_folder(tmp_path / "data" / split, ("x", "y"), per_class=4)
    user = ["vit_tiny_patch16_224", "--checkpoint", str(ckpt), "--model-kwargs", json.dumps(kwargs)]
    q = tmp_path / "q.safetensors"
    assert main(["quantize", *user, "--data", str(tmp_path / "data"), "--method", "rtn", "--bits", "W8A8",
                 "--calib-size", "8", "--out", str(q)]) == 0
    prog = tmp_path / "q.intprog.safetensors"
    assert main(["export", *user, "--quantized", str(q), "--data", str(tmp_path / "data"), "--calib-size", "8"]) == 0
    assert prog.exists()
    assert main(["run", str(prog), "--data", str(tmp_path / "data"), "--quantized", str(q)]) == 0
    run = json.loads(next(results.glob("run_*.json")).read_text())
    assert run["data"]["size"] == 8 and run["config"]["w_bits"] == 8
    assert {"top1", "fake_quant_top1", "vs_fake_quant_agreement", "peak_activation_bytes",
            "weight_bytes_packed"} <= set(run["metrics"])
    assert run["metrics"]["vs_fake_quant_kl"] < 0.05  # dequantized logits: not integer codes against floats
    assert run["metrics"]["vs_fake_quant_cosine"] > 0.99
    exp = json.loads(next(results.glob("export_*.json")).read_text())
    assert exp["metrics"]["weight_bytes_packed"] * 4 == exp["metrics"]["weight_bytes_fp32"]
    assert exp["metrics"]["fidelity_logit_cosine"] > 0.99 and exp["metrics"]["fidelity_images"] == 8
    # The fidelity guard: a program below --min-cosine is refused by name and not written.
    prog.unlink()
    assert main(["export", *user, "--quantized", str(q), "--data", str(tmp_path / "data"), "--calib-size", "8",
                 "--min-cosine", "1.01"]) == 2
    err = capsys.readouterr().err
    assert "departs first at" in err and "Nothing was written" in err and not prog.exists()
    (tmp_path / "broken.safetensors").write_bytes(b"junk")
    assert main(["run", str(tmp_path / "broken.safetensors")]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err


@pytest.mark.parametrize("bits", [3, 4])
def test_low_bit_weights_are_stored_packed(tmp_path, bits):
    torch.manual_seed(0)
    arch, kw = TINY["vit"]
    fp = models.build(arch, **kw).eval()
    x = _smooth(16)
    qm, _ = quantize(fp, x, QuantizeConfig(method="rtn", quant=QuantConfig(bits, 4), init_size=16))
    program = export_program(qm, x)
    path = program.save(tmp_path / "p.safetensors")
    from safetensors.numpy import load_file

    stored = load_file(str(path))["b0.fc1.weight"]
    w = program.consts["b0.fc1.weight"]
    assert stored.size == (w.size * bits + 7) // 8  # packed on disk
    again = load(path)
    assert np.array_equal(again.consts["b0.fc1.weight"], w) and again.consts["b0.fc1.weight"].dtype == w.dtype
    codes = program.input_codes(x[:2])
    assert np.array_equal(reference.run(again, codes), reference.run(program, codes))
    sizes = program.weight_bytes()
    assert sizes["weight_bytes_packed"] * 32 == sizes["weight_bytes_fp32"] * bits  # bits/32 of FP32


def test_fidelity_guard_names_the_op_where_a_program_departs():
    """A program whose first block's attention branch is wrong (its projection requantized 2^6 too
    large, as a dropped LayerScale of 64 would make it) is caught, and located at that block's
    residual add, not later."""
    from pfcr import fidelity

    torch.manual_seed(0)
    arch, kw = TINY["vit"]
    fp = models.build(arch, **kw).eval()
    x = _smooth(16)
    qm, _ = quantize(fp, x, QuantizeConfig(method="rtn", quant=QuantConfig(8, 8), init_size=16))
    program = export_program(qm, x)
    assert fidelity.measure(qm, program, x, 0.95).logit_cosine > 0.99
    program.consts["b0.proj.shift"] = program.consts["b0.proj.shift"] - 6
    bad = fidelity.measure(qm, program, x, 0.95)
    assert bad.logit_cosine < 0.95 and "'b0.stream_attn'" in bad.divergence
