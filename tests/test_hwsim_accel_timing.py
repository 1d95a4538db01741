"""Accelerator time and memory: cycle counts against closed forms, traffic, configuration errors, the command."""

from __future__ import annotations

import json
import tomllib

import pytest

from hwsim.accelerator.config import ConfigError, from_dict, load_config, presets
from hwsim.accelerator.execute import Accelerator
from hwsim.accelerator.timing import costs, gemm_cycles, layer_cost
from hwsim.accelerator.workload import Layer


def _array(rows: int, cols: int, dataflow: str):
    return load_config("edge-npu").replace(rows=rows, cols=cols, dataflow=dataflow)


# (M, K, N, rows, cols, dataflow, cycles) worked out by hand from the closed forms
CASES = [
    (17, 30, 20, 8, 8, "weight_stationary", 4 * 3 * (16 + 8 + 17 - 2)),  # 12 folds of 2R + C + M - 2
    (17, 30, 20, 8, 8, "output_stationary", 3 * 3 * (16 + 8 + 30 - 2)),  # 9 folds of 2R + C + K - 2
    (1, 1, 1, 1, 1, "weight_stationary", 2),
    (64, 64, 64, 16, 4, "weight_stationary", 4 * 16 * (32 + 4 + 64 - 2)),
    (64, 64, 64, 16, 4, "output_stationary", 4 * 16 * (32 + 4 + 64 - 2)),
    (32, 32, 32, 32, 32, "output_stationary", 1 * (64 + 32 + 32 - 2)),
]


@pytest.mark.parametrize(("m", "k", "n", "rows", "cols", "dataflow", "cycles"), CASES)
def test_gemm_cycles_equal_the_closed_forms(m, k, n, rows, cols, dataflow, cycles):
    assert gemm_cycles(m, k, n, _array(rows, cols, dataflow)) == cycles


def test_scalesim_record_agrees_up_to_the_documented_differences():
    """The committed SCALE-Sim comparison: every job differs only by the last-cycle index (and the OS drain)."""
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks/results/accelerator"
    records = list(path.glob("bench_*accel-vs-scalesim*.json"))
    if not records:
        pytest.skip("no SCALE-Sim comparison recorded (python benchmarks/accel_study.py scalesim)")
    rows = json.loads(records[0].read_text())["comparison"]
    for r in rows:  # recomputed from today's model, not read from the record
        ours = gemm_cycles(r["m"], r["k"], r["n"], _array(r["rows"], r["cols"],
                                                           {"ws": "weight_stationary", "os": "output_stationary"}[
                                                               r["dataflow"]]))
        drain = r["folds"] * r["rows"] if r["dataflow"] == "os" else 0
        assert ours - 1 - drain == r["scalesim"], r["name"]


def test_bandwidth_bound_layer_stalls():
    cfg = load_config("mcu")
    layer = Layer("fc", "linear", "array", m=1, k=1024, n=1024, w_width=4, a_width=4, w_bits=4, in_bits=4,
                  out_bits=4)
    cost = layer_cost(layer, cfg)
    weights = 1024 * 1024 * 4 / 8
    assert cost.dram_bytes == weights  # read once; activations stay on chip
    assert cost.cycles == max(cost.compute_cycles, weights / cfg.dram_bytes_per_cycle)
    assert cost.stall_cycles == cost.cycles - cost.compute_cycles > 0
    assert cost.utilization == pytest.approx(1024 * 1024 / (64 * cost.cycles))


def test_program_costs_add_up(zoo_program):
    program, codes, _ = zoo_program(4)
    cfg = load_config("edge-npu")
    acc = Accelerator(program, cfg)
    acc.run(codes[:2])
    per, totals = costs(acc.trace.layers, cfg, 784, 40)
    assert totals["macs"] == sum(layer.macs for layer in acc.trace.layers if layer.unit == "array")
    assert totals["cycles"] == sum(c.cycles for c in per) + -(-(784 + 40) // 16)
    assert totals["latency_ms"] == pytest.approx(totals["cycles"] / 500e3)
    assert 0 < totals["utilization"] < 1
    qkv = next(layer for layer in acc.trace.layers if layer.name == "b0.qkv")
    assert (qkv.m, qkv.k, qkv.n) == (17, program.consts["b0.qkv.weight"].shape[1],
                                     program.consts["b0.qkv.weight"].shape[0])


def _preset_dict(name: str = "edge_npu") -> dict:
    from hwsim.accelerator.config import PRESETS_DIR

    return tomllib.loads((PRESETS_DIR / f"{name}.toml").read_text())


def test_presets_load():
    assert {"edge-npu", "mcu"} <= set(presets())
    assert load_config("mcu").dataflow == "output_stationary"


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["array"].update(dataflow="row_stationary"), "array.dataflow"),
    (lambda d: d["accumulator"].update(overflow="saturate"), "accumulator.overflow"),
    (lambda d: d["accumulator"].update(bits=64), "accumulator.bits"),
    (lambda d: d["requant"].update(rounding="half_up"), "requant.rounding"),
    (lambda d: d["memory"].pop("ofmap_sram_kib"), "ofmap_sram_kib"),
    (lambda d: d["array"].update(rows=0), "array.rows"),
    (lambda d: d["units"].pop("softmax"), "softmax"),
    (lambda d: d.update(extra=1), "extra"),
    (lambda d: d["energy"].update(mac_pj={"4": 0.1}), "no entry for 9-bit operands"),
])
def test_configuration_errors_name_the_field(change, message):
    data = _preset_dict()
    change(data)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        from_dict(data, "my.toml")


def test_unknown_preset_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        load_config("tpu-v9")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_operands_wider_than_the_multipliers_are_refused(zoo_program):
    program, codes, _ = zoo_program(8)
    cfg = load_config("edge-npu").replace(activation_bits=8)
    with pytest.raises(ConfigError, match="layer embed multiplies 9-bit activations"):
        Accelerator(program, cfg).run(codes[:1])


def test_simulate_command_writes_a_record_with_a_layer_table(zoo_program, results, tmp_path, capsys):
    from cli.main import main

    program, _, _ = zoo_program(4)
    program.meta.update({"model": "vit_fmnist", "w_bits": 4, "a_bits": 4})
    path = program.save(tmp_path / "w4a4.intprog.safetensors")
    assert main(["simulate", str(path), "--config", "mcu", "--limit", "12", "--batch-size", "5"]) == 0
    (record,) = [json.loads(p.read_text()) for p in results.glob("simulate_*.json")]
    assert record["metrics"]["bit_exact"] and record["metrics"]["images"] == 12
    assert record["config"]["accelerator"]["name"] == "mcu"
    names = [row["name"] for row in record["layers"]]
    assert "b0.fc1" in names and "b0.attn.av" in names
    assert record["metrics"]["cycles"] == sum(row["cycles"] for row in record["layers"]) + -(-(784 + 40) // 2)
    assert "b0.fc1" in capsys.readouterr().out
    assert main(["simulate", str(path), "--config", "nope"]) == 2
    assert main(["simulate", str(path), "--acc-bits", "4"]) == 2
    assert main(["simulate", str(path), "--limit", "0"]) == 2
    assert main(["simulate", str(tmp_path / "missing.safetensors")]) == 2
    assert "accumulator.bits = 4" in capsys.readouterr().err
