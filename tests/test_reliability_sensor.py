"""Bad input to `pfcr sensor emva | photo | sweep` (issue 17): one table of (argv, exit code, words the
error must contain), run in-process. Each bad input exits 2 with one line that names the input and
the fix, before any long computation; never a traceback, never exit 0, never a NaN in a record.
Then the EMVA 1288 edges the issue found: an ADC that saturates before the full well is measured
against the ADC's top, and the biases of quantization and of a too low black level are flagged."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cli.main import main

# Sensor files by name; each value is the file's text (JSON, or not).
SENSOR_FILES = {
    "adc_limited": '{"conversion_gain_uv_per_e": 4687.5}',  # K = 8 DN/e- at 10 bits: the ADC tops at 120 e-
    "nan_read_noise": '{"read_noise_e": NaN}',
    "inf_well": '{"full_well_e": Infinity}',
    "prnu_3": '{"prnu": 3.0}',
    "string_bits": '{"adc_bits": "10"}',
    "fractional_bits": '{"adc_bits": 10.5}',
    "string_read_noise": '{"read_noise_e": "2"}',
    "fractional_read_noise_ok": '{"read_noise_e": 2.5, "adc_bits": 12.0}',
    "tiny_well_8bit": '{"full_well_e": 5, "adc_bits": 8}',
    "subelectron_well": '{"full_well_e": 0.5}',
    "qe_above_1": '{"quantum_efficiency": 1.5}',
    "negative_dark": '{"dark_current_e_per_s": -1}',
    "bool_gain": '{"analog_gain": true}',
    "huge_int": '{"full_well_e": 1' + "0" * 400 + "}",
    "singular_crosstalk": '{"cfa": "rggb", "crosstalk": [[1, 0, 0], [1, 0, 0], [0, 0, 1]]}',
    "zero_channel_qe": '{"channel_qe": [0, 1, 1]}',
    "crosstalk_number": '{"crosstalk": 3}',
    "numeric_cfa": '{"cfa": 5}',
    "list_not_object": "[1, 2, 3]",
    "broken_json": '{"adc_bits": 10',
    "unknown_field": '{"full_wel_e": 3}',
}

EMVA = ["sensor", "emva", "--size", "32", "--steps", "12"]
PHOTO = ["sensor", "photo"]
SWEEP = ["sensor", "sweep", "--fp", "vit_fmnist"]

# (id, argv with {file} / {dir} placeholders, expected exit code, words the error line must contain)
CASES = [
    # emva: arguments
    ("emva-size-0", [*EMVA, "--size", "0"], 2, ["--size 0", "16..2048"]),
    ("emva-size-1", [*EMVA, "--size", "1"], 2, ["--size 1", "16..2048"]),
    ("emva-size-huge", [*EMVA, "--size", "100000"], 2, ["--size 100000", "16..2048"]),
    ("emva-steps-0", [*EMVA, "--steps", "0"], 2, ["--steps 0", "8..2000"]),
    ("emva-steps-1", [*EMVA, "--steps", "1"], 2, ["--steps 1", "8..2000"]),
    ("emva-steps-negative", [*EMVA, "--steps", "-4"], 2, ["--steps", "-4"]),
    ("emva-seed-negative", [*EMVA, "--seed", "-1"], 2, ["--seed", "-1"]),
    ("emva-analog-gain-nan", [*EMVA, "--analog-gain", "nan"], 2, ["--analog-gain", "nan"]),
    ("emva-analog-gain-negative", [*EMVA, "--analog-gain", "-2"], 2, ["--analog-gain", "-2"]),
    ("emva-adc-bits-0", [*EMVA, "--adc-bits", "0"], 2, ["--adc-bits 0", "1..16"]),
    ("emva-adc-bits-17", [*EMVA, "--adc-bits", "17"], 2, ["--adc-bits 17", "1..16"]),
    # emva: sensors that cannot be measured, refused before a frame is simulated
    ("emva-adc-4bit", [*EMVA, "--adc-bits", "4"], 2, ["saturates", "DN above black", "--adc-bits"]),
    ("emva-adc-6bit", [*EMVA, "--adc-bits", "6"], 2, ["temporal noise", "0.45 DN", "--analog-gain", "--adc-bits"]),
    ("emva-well-5e-8bit", [*EMVA, "--sensor", "{tiny_well_8bit}"], 2,
     ["tiny_well_8bit", "full well of 5 e-", "raise full_well_e"]),
    # sensor files: type, finiteness, range, shape; each names the file, the field and the fix
    ("config-nan-read-noise", [*EMVA, "--sensor", "{nan_read_noise}"], 2,
     ["nan_read_noise.json", "read_noise_e", "finite", "fix the field"]),
    ("config-inf-well", [*EMVA, "--sensor", "{inf_well}"], 2, ["full_well_e", "finite"]),
    ("config-prnu-3", [*EMVA, "--sensor", "{prnu_3}"], 2, ["prnu 3.0", "[0, 0.2]"]),
    ("config-string-adc-bits", [*EMVA, "--sensor", "{string_bits}"], 2, ["adc_bits '10'", "without quotes"]),
    ("config-fractional-adc-bits", [*EMVA, "--sensor", "{fractional_bits}"], 2, ["adc_bits 10.5", "integer"]),
    ("config-string-read-noise", [*EMVA, "--sensor", "{string_read_noise}"], 2, ["read_noise_e '2'", "without quotes"]),
    ("config-subelectron-well", [*EMVA, "--sensor", "{subelectron_well}"], 2, ["full_well_e 0.5", ">= 1"]),
    ("config-qe-above-1", [*EMVA, "--sensor", "{qe_above_1}"], 2, ["quantum_efficiency 1.5", "(0, 1]"]),
    ("config-negative-dark-current", [*EMVA, "--sensor", "{negative_dark}"], 2, ["dark_current_e_per_s", ">= 0"]),
    ("config-bool-gain", [*EMVA, "--sensor", "{bool_gain}"], 2, ["analog_gain True", "number"]),
    ("config-huge-int", [*EMVA, "--sensor", "{huge_int}"], 2, ["full_well_e", "finite"]),
    ("config-singular-crosstalk", [*PHOTO, "--sensor", "{singular_crosstalk}"], 2, ["crosstalk", "singular"]),
    ("config-zero-channel-qe", [*EMVA, "--sensor", "{zero_channel_qe}"], 2, ["channel_qe", "> 0"]),
    ("config-crosstalk-number", [*EMVA, "--sensor", "{crosstalk_number}"], 2, ["crosstalk 3", "3 rows of 3"]),
    ("config-numeric-cfa", [*EMVA, "--sensor", "{numeric_cfa}"], 2, ["cfa 5", "mono, rggb"]),
    ("config-list", [*EMVA, "--sensor", "{list_not_object}"], 2, ["list_not_object.json", "JSON object"]),
    ("config-broken-json", [*EMVA, "--sensor", "{broken_json}"], 2, ["broken_json.json", "not JSON"]),
    ("config-unknown-field", [*EMVA, "--sensor", "{unknown_field}"], 2, ["full_wel_e", "known:"]),
    ("config-not-utf8", [*EMVA, "--sensor", "{not_utf8}"], 2, ["not_utf8.json", "UTF-8"]),
    ("config-missing", [*EMVA, "--sensor", "{dir}/nope.json"], 2, ["nope.json", "neither a preset"]),
    # photo
    ("photo-lux-negative", [*PHOTO, "--lux", "-5"], 2, ["--lux -5", "> 0"]),
    ("photo-lux-nan", [*PHOTO, "--lux", "nan"], 2, ["--lux nan", "finite"]),
    ("photo-lux-inf", [*PHOTO, "--lux", "inf"], 2, ["--lux inf", "finite"]),
    ("photo-max-side-0", [*PHOTO, "--max-side", "0"], 2, ["--max-side 0", "at least 8"]),
    ("photo-max-side-negative", [*PHOTO, "--max-side", "-3"], 2, ["--max-side -3", "at least 8"]),
    ("photo-image-too-small", [*PHOTO, "--image", "{tiny_png}"], 2, ["tiny.png", "4x3", "larger image"]),
    ("photo-scaled-too-small", [*PHOTO, "--image", "{wide_png}", "--max-side", "8"], 2,
     ["--max-side 8", "8x2", "raise --max-side"]),
    ("photo-not-an-image", [*PHOTO, "--image", "{broken_json}"], 2, ["broken_json.json", "not an image"]),
    ("photo-seed-negative", [*PHOTO, "--seed", "-7"], 2, ["--seed", "-7"]),
    ("photo-adc-bits-0", [*PHOTO, "--adc-bits", "0"], 2, ["--adc-bits 0", "1..16"]),
    # sweep: every argument is checked before images or models load
    ("sweep-lux-negative", [*SWEEP, "--lux", "1", "-5"], 2, ["--lux -5", "> 0"]),
    ("sweep-lux-nan", [*SWEEP, "--lux", "nan"], 2, ["--lux nan", "finite"]),
    ("sweep-limit-0", [*SWEEP, "--limit", "0"], 2, ["--limit 0", "at least 1"]),
    ("sweep-limit-negative", [*SWEEP, "--limit", "-5"], 2, ["--limit -5", "at least 1"]),
    ("sweep-adc-bits-0", [*SWEEP, "--adc-bits", "8", "0"], 2, ["--adc-bits 0", "1..16"]),
    ("sweep-adc-bits-17", [*SWEEP, "--adc-bits", "17"], 2, ["--adc-bits 17", "1..16"]),
    ("sweep-nan-sensor", [*SWEEP, "--sensor", "{nan_read_noise}"], 2, ["read_noise_e", "finite"]),
    ("sweep-bayer-sensor", [*SWEEP, "--sensor", "rggb-1.4um"], 2, ["rggb-1.4um", "monochrome"]),
    ("sweep-nothing", ["sensor", "sweep"], 2, ["nothing to evaluate", "--program"]),
    # output folders that cannot be written: refused before the computation, not after it
    ("emva-results-unwritable", [*EMVA, "--results", "{broken_json}/sub"], 2, ["cannot write", "--results"]),
    ("photo-out-unwritable", [*PHOTO, "--out", "{broken_json}/sub"], 2, ["cannot write", "--out"]),
    ("sweep-results-unwritable", [*SWEEP, "--results", "{broken_json}/sub"], 2, ["cannot write", "--results"]),
]


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    """Placeholder -> path: each sensor file, a non-UTF-8 file, tiny and wide PNGs, the folder."""
    from PIL import Image

    out = {"dir": str(tmp_path)}
    for name, text in SENSOR_FILES.items():
        (tmp_path / f"{name}.json").write_text(text)
        out[name] = str(tmp_path / f"{name}.json")
    (tmp_path / "not_utf8.json").write_bytes(b'{"name": "\xff\xfe"}')
    out["not_utf8"] = str(tmp_path / "not_utf8.json")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).save(tmp_path / "tiny.png")
    Image.fromarray(rng.integers(0, 256, (10, 40, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    out["tiny_png"], out["wide_png"] = str(tmp_path / "tiny.png"), str(tmp_path / "wide.png")
    return out


def run_cli(argv: list[str]) -> int:
    """`pfcr ARGV` in-process; an argparse error (SystemExit) counts as its exit code."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def _no_nan(path) -> dict:
    """A record file parsed strictly: NaN or Infinity in it fails the test."""
    def refuse(token):
        raise AssertionError(f"{path} holds {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize(("argv", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(argv, code, words, files, results, capsys, monkeypatch):
    import core.data
    from hwsim.sensor import camera, emva

    def computation_started(*args, **kwargs):
        raise AssertionError("the computation started before the input was checked")

    # Every refusal comes first: no frame simulated, no photo captured, no image set loaded.
    monkeypatch.setattr(emva, "photon_transfer", computation_started)
    monkeypatch.setattr(camera, "capture", computation_started)
    monkeypatch.setattr(core.data, "load_fmnist_arrays", computation_started)
    argv = [a.format(**files) for a in argv]
    if "--results" not in argv:
        argv += ["--results", str(results)]
    assert run_cli(argv) == code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err  # one line says what is wrong
    for word in words:
        assert word in errors[0], (word, errors[0])
    assert not (results.exists() and list(results.rglob("*.json")))  # nothing written


def test_integral_float_adc_bits_is_accepted(files):
    """12.0 from a JSON writer means 12: accepted and stored as an integer."""
    from hwsim.sensor.config import load_sensor

    cfg = load_sensor(files["fractional_read_noise_ok"])
    assert cfg.adc_bits == 12 and isinstance(cfg.adc_bits, int) and cfg.dn_max == 4095


# --- EMVA 1288 edges ---------------------------------------------------------------------------------

def test_emva_of_an_adc_limited_sensor_measures_against_the_adc_top(files, results, capsys):
    """K = 8 DN/e- at 10 bits: the ADC tops out at 120 e-, far below the 10 000 e- well. The series is
    planned from that effective saturation (most steps unsaturated), the plateau is compared with it,
    the output says the ADC limits, and the record holds no NaN."""
    assert main([*EMVA[:2], "--sensor", files["adc_limited"], "--size", "64", "--steps", "24",
                 "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "the ADC saturates first" in out and "nan" not in out.lower()
    (path,) = results.glob("*.json")
    m = _no_nan(path)["metrics"]
    assert m["saturation_limited_by"] == "ADC" and m["configured_full_well_e"] == 10000
    assert m["expected_full_well_e"] == pytest.approx((1023 - 64) / 8)
    assert abs(m["rel_error_full_well_e"]) < 0.01  # was -93 % against the configured well
    assert abs(m["rel_error_system_gain"]) < 0.02 and abs(m["rel_error_quantum_efficiency"]) < 0.02
    assert m["fit_points"] >= 24 // 3  # was 0 unsaturated steps: a NaN record
    assert all(math.isfinite(v) for v in m.values() if isinstance(v, float))


def test_emva_flags_gain_qe_and_well_when_quantization_dominates(results, capsys):
    """8-bit mono-3um: dark noise 0.05 DN. Gain, QE and well are a few % off: flagged with the reason,
    not only the dark noise and dark current."""
    assert main([*EMVA[:2], "--adc-bits", "8", "--size", "64", "--steps", "24", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    (path,) = results.glob("*.json")
    m = _no_nan(path)["metrics"]
    assert m["quantization_limited"] and not m["dark_noise_resolved"]
    assert set(m["caveats"]) == {"system_gain", "quantum_efficiency", "full_well_e", "dark_noise_e",
                                 "dark_current_e_per_s"}
    assert "quantization noise dominates" in m["caveats"]["system_gain"]
    warned = [line for line in out.splitlines() if "warning:" in line]
    assert any("system_gain" in w and "quantization noise dominates" in w for w in warned)


def test_emva_warns_when_the_black_level_clips_dark_frames(files, results, capsys):
    """A black level of 0 DN at 12 bits (dark noise about 1 DN): dark frames clip at code 0. The
    command warns, names the biased results and says the fix; at the preset's black level, no caveat."""
    clipped = files["dir"] + "/low_black.json"
    with open(clipped, "w") as f:
        f.write('{"adc_bits": 12, "black_level_fraction": 0}')
    assert main([*EMVA[:2], "--sensor", clipped, "--size", "64", "--steps", "24", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "raise black_level_fraction to at least" in out and "clip at code 0" in out
    (path,) = results.glob("*.json")
    m = _no_nan(path)["metrics"]
    assert m["black_level_clips"] and m["dark_clipped_fraction"] > 0.5
    assert "black level" in m["caveats"]["dark_noise_e"] and "black level" in m["caveats"]["system_gain"]
    path.unlink()
    assert main([*EMVA[:2], "--adc-bits", "12", "--size", "64", "--steps", "24", "--results", str(results)]) == 0
    (path,) = results.glob("*.json")
    m = _no_nan(path)["metrics"]
    assert m["caveats"] == {} and not m["black_level_clips"] and "warning" not in capsys.readouterr().out


@pytest.mark.slow
def test_emva_adc_limited_at_full_size(files, results):
    """The issue's case at the command's defaults (256x256, 80 steps): within 1 % of the ADC's top."""
    assert main([*EMVA[:2], "--sensor", files["adc_limited"], "--results", str(results)]) == 0
    (path,) = results.glob("*.json")
    m = _no_nan(path)["metrics"]
    assert abs(m["rel_error_full_well_e"]) < 0.01 and abs(m["rel_error_system_gain"]) < 0.01
    assert m["fit_points"] >= 30  # of 80 (0 before: the series was planned from the 10 000 e- well)


# --- Interruption -----------------------------------------------------------------------------------

def test_interrupted_sweep_keeps_finished_points_and_resumes(results):
    """Ctrl-C during a sweep: the points already recorded stay, and the rerun skips them; a damaged
    record of a point is measured again, not a traceback."""
    from hwsim.sensor import sweep
    from hwsim.sensor.config import PRESETS

    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.arange(6) % 10
    calls = {"n": 0}

    def predict(batch):
        calls["n"] += 1
        if calls["n"] == 3:  # clean pass, first point, then Ctrl-C at the second point
            raise KeyboardInterrupt
        return np.zeros(len(batch), dtype=np.int64)

    ev = sweep.Evaluator("sensor-fp32", None, None, {"name": "stub", "checkpoint_sha256": None}, predict)
    data = {"name": "fashion-mnist", "split": "test", "size": 6}
    args = (images, labels, [10.0, 100.0], [8], PRESETS["mono-3um"], 0, results, "t", data)
    with pytest.raises(KeyboardInterrupt):
        sweep.run([ev], *args, log=lambda s: None)
    (first,) = results.glob("*.json")
    assert "lux10-" in first.name and _no_nan(first)["metrics"]["top1"] == pytest.approx(1 / 6)  # 0 is 1 label of 6
    log: list[str] = []
    written = sweep.run([ev], *args, log=log.append)
    assert len(written) == 1 and "lux100-" in written[0].name
    assert any("record exists, skipped" in line for line in log)
    first.write_text("{ damaged")
    assert sweep.run([ev], *args, log=log.append) == [first]  # redone, not a JSONDecodeError
    _no_nan(first)
