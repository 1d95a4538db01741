"""A user's image folder through the whole chain (issue 16): `pfcr bench`, `simulate`, `run` and
`sensor sweep` take `--data FOLDER` and feed its images, preprocessed as the program's model expects
(timm's eval transform for its config, at the model's input size: here 3x32x32 RGB), quantized to the
program's input codes. Each record names the data (folder, count, sha256 of the files), the bit-exact
checks run on those very images, and bad input is one error line naming the input and the fix.

One small user model (a timm ViT, 3x32x32, 2 classes) is quantized at W8A8 by calibration alone and
exported from the command line, then compiled once for the host (about 15 s of the file's time)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from core.records import read_records
from tests.conftest import USER_KWARGS, image_folder, tiny_vit

USER = "vit_tiny_patch16_224"
# The user's model normalizes each channel differently, so that a channel mixed up anywhere shows.
KWARGS = {**USER_KWARGS, "num_classes": 2,
          "pretrained_cfg_overlay": {"mean": [0.45, 0.5, 0.55], "std": [0.2, 0.25, 0.3], "crop_pct": 0.875}}


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    """A user's folder (2 classes x 3 random 32x32 RGB images; train/ and val/ alike), their model's
    checkpoint, its W8A8 program (`pfcr quantize` + `pfcr export`), and the program built for the host."""
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("chain")
    torch.manual_seed(0)
    ckpt, kwargs = root / "mine.safetensors", KWARGS
    save_file(tiny_vit(**kwargs).state_dict(), str(ckpt))
    image_folder(root / "photos", ("cat", "dog"), per_class=3)
    base = [USER, "--checkpoint", str(ckpt), "--model-kwargs", json.dumps(kwargs), "--data", str(root / "photos"),
            "--results", str(root / "setup")]
    assert main(["quantize", *base, "--method", "rtn", "--bits", "W8A8", "--calib-size", "6",
                 "--out", str(root / "q.safetensors")]) == 0
    assert main(["export", *base, "--quantized", str(root / "q.safetensors"), "--calib-size", "6",
                 "--check-images", "6"]) == 0
    prog = root / "q.intprog.safetensors"
    out = {"root": root, "data": str(root / "photos"), "prog": str(prog), "ckpt": str(ckpt), "kwargs": kwargs}
    try:
        from tvm_backends.build import compile_program
    except ImportError:  # no TVM wheel: the bench tests skip
        return out
    return {**out, "art": str(compile_program(prog, "host", root / "art").path)}


def _expected_inputs(chain: dict, n: int | None = None):
    """What the program must be fed: the folder's images through timm's eval transform for the model (the
    loader `pfcr eval` uses), as the program's input codes, with their labels."""
    import torch

    from core import data
    from core.models import load_model
    from intprog.program import load

    module = load_model(USER, chain["ckpt"], **chain["kwargs"]).module
    ds = data.image_folder(chain["data"], module)
    items = [ds[i] for i in range(len(ds) if n is None else n)]
    x = torch.stack([x for x, _ in items])
    assert x.shape[1:] == (3, 32, 32)
    return load(chain["prog"]).input_codes(x), np.array([y for _, y in items])


def _only(results: Path, kind: str) -> dict:
    (rec,) = [r for r in read_records(results) if r["kind"] == kind]
    return rec


def _data_field(chain: dict, n: int) -> dict:
    """The `data` field `pfcr run --data FOLDER --limit n` records: the reference for the others."""
    from core import data
    from core.models import load_model

    module = load_model(USER, chain["ckpt"], **chain["kwargs"]).module
    return data.evaluation_set(chain["data"], "test", n, module)[1]


def test_run_records_the_folder_it_read(chain, tmp_path):
    assert main(["run", chain["prog"], "--data", chain["data"], "--limit", "5", "--results", str(tmp_path)]) == 0
    rec = _only(tmp_path, "run")
    sha = _data_field(chain, 5)["sha256"]
    assert rec["data"] == {"name": chain["data"], "split": "folder", "size": 5, "sha256": sha}
    # another set of images has another fingerprint
    assert _data_field(chain, 6)["sha256"] != rec["data"]["sha256"]


def test_simulate_feeds_the_folder_and_checks_it_bit_exact(chain, tmp_path, monkeypatch):
    from hwsim.accelerator import simulate as sim

    fed, real = [], sim.simulate

    def spy(program, batches, cfg, compare=True):
        batches = list(batches)
        fed.extend(batches)
        return real(program, batches, cfg, compare)

    monkeypatch.setattr(sim, "simulate", spy)
    assert main(["simulate", chain["prog"], "--data", chain["data"], "--batch-size", "4",
                 "--results", str(tmp_path)]) == 0
    codes, labels = _expected_inputs(chain)
    np.testing.assert_array_equal(np.concatenate([c for c, _ in fed]), codes)
    np.testing.assert_array_equal(np.concatenate([y for _, y in fed]), labels)
    rec = _only(tmp_path, "simulate")
    assert rec["data"] == _data_field(chain, 6) and rec["data"]["size"] == 6
    assert rec["metrics"]["images"] == 6 and rec["metrics"]["bit_exact"] is True


def test_bench_checks_the_build_on_the_folder(chain, tmp_path, monkeypatch, capsys):
    pytest.importorskip("tvm")
    from tvm_backends import bench, rpc

    bench_argv = ["bench", chain["art"], "--program", chain["prog"], "--data", chain["data"], "--check-images", "4",
                  "--fp32", "none", "--warmup", "1", "--min-runs", "5", "--min-seconds", "0"]
    fed, real = [], bench.check_outputs

    def spy(run, program, codes, batch, dtype):
        fed.append(codes)
        return real(run, program, codes, batch, dtype)

    monkeypatch.setattr(bench, "check_outputs", spy)
    assert main([*bench_argv, "--results", str(tmp_path / "ok")]) == 0
    codes, labels = _expected_inputs(chain, 4)
    np.testing.assert_array_equal(fed[0], codes)
    rec = _only(tmp_path / "ok", "bench")
    assert rec["data"] == _data_field(chain, 4)
    m = rec["metrics"]
    assert m["bit_exact"] and m["checked_images"] == 4 and m["mismatched_images"] == 0
    from intprog import reference
    from intprog.program import load

    assert m["top1"] == float(np.mean(reference.run(load(chain["prog"]), codes).argmax(1) == labels))
    assert "on 4 images of " + chain["data"] in capsys.readouterr().out

    # the check can fail: a build whose outputs differ on the folder's images is caught and recorded
    right = rpc.Runner.run

    def wrong(self, x):
        out = right(self, x)
        out[0, 0] += 1
        return out

    monkeypatch.setattr(rpc.Runner, "run", wrong)
    assert main([*bench_argv, "--results", str(tmp_path / "bad")]) == 2
    assert "NOT bit-exact" in capsys.readouterr().err
    assert _only(tmp_path / "bad", "bench")["metrics"]["mismatched_images"] == 4


def test_sweep_sees_the_folder_in_colour_at_the_model_resolution(chain, tmp_path, monkeypatch):
    """224x224 would be the same path: the scenes are the folder's images resized and cropped as the model
    reads them (32x32 RGB here), through the Bayer sensor (the default for RGB scenes) and the ISP; with no
    sensor noise to speak of (10 000 lux, 12 bits) the program sees almost what `pfcr run` feeds it."""
    from core import data
    from core.models import load_program_model
    from hwsim.sensor import isp
    from intprog import reference
    from intprog.program import load

    # without a sensor, the ISP's code tables give the program exactly the codes of `pfcr run`'s path
    program = load(chain["prog"])
    module = load_program_model(program.meta).module
    scenes, labels, rec, mean, std = data.scene_set(chain["data"], "test", None, module)
    assert scenes.shape == (6, 32, 32, 3) and scenes.dtype == np.uint8
    assert mean == (0.45, 0.5, 0.55) and std == (0.2, 0.25, 0.3)
    luts = [isp.input_code_lut(program.input, m, s) for m, s in zip(mean, std, strict=True)]
    codes = np.stack([lut[scenes[..., c]] for c, lut in enumerate(luts)], axis=1)
    want, want_labels = _expected_inputs(chain)
    np.testing.assert_array_equal(codes, want)
    np.testing.assert_array_equal(labels, want_labels)

    fed, real = [], reference.run

    def spy(program, codes, *rest):
        fed.append(codes)
        return real(program, codes, *rest)

    monkeypatch.setattr(reference, "run", spy)
    assert main(["sensor", "sweep", "--program", chain["prog"], "--data", chain["data"], "--lux", "1", "10000",
                 "--adc-bits", "12", "--limit", "6", "--results", str(tmp_path)]) == 0
    monkeypatch.setattr(reference, "run", real)
    np.testing.assert_array_equal(fed[0], want)  # the clean pass: the scenes through the ISP's code tables
    assert fed[1].shape == want.shape and (fed[1] != want).any()  # 1 lux: what the noisy camera delivers
    recs = {r["config"]["lux"]: r for r in read_records(tmp_path)}
    assert sorted(recs) == [1, 10000]
    clean_pred = reference.run(program, want).argmax(1)
    for r in recs.values():
        assert r["data"] == rec == _data_field(chain, 6)
        assert r["config"]["sensor"]["cfa"] == "rggb" and r["config"]["method"] == "sensor-intprog"
        assert r["metrics"]["clean_top1"] == float(np.mean(clean_pred == want_labels))
        seen = reference.run(program, fed[2 if r["config"]["lux"] == 10000 else 1]).argmax(1)
        assert r["metrics"]["clean_agreement"] == float(np.mean(seen == clean_pred))  # label-free
    assert recs[10000]["metrics"]["psnr_db"] > recs[1]["metrics"]["psnr_db"] + 3


def test_a_one_channel_program_reads_a_folder_in_grayscale(tmp_path):
    """A folder for a zoo program (1x28x28): read as grayscale at 28x28 and normalized as the zoo model
    is (as `pfcr eval`/`run` do), not refused."""
    from core import data

    image_folder(tmp_path / "clothes", ("a", "b"), per_class=2, size=40)
    ds, rec, model = data.program_set(str(tmp_path / "clothes"), "test", None, {"model": "vit_fmnist"},
                                      [1, 28, 28], "zoo.intprog.safetensors")
    assert ds[0][0].shape == (1, 28, 28) and rec["size"] == 4 and model.name == "vit_fmnist"
    scenes, *_ = data.scene_set(str(tmp_path / "clothes"), "test", None, model.module)
    assert scenes.shape == (4, 28, 28)


# ---------------------------------------------------------------------------------------------
# bad input: one error line naming the input and the fix, exit 2, nothing recorded


def _edited_program(chain: dict, tmp_path: Path, **meta) -> str:
    from intprog.program import load

    program = load(chain["prog"])
    program.meta = {k: v for k, v in {**program.meta, **meta}.items() if v is not None}
    return str(program.save(tmp_path / "edited.intprog.safetensors"))


def _setup(kind: str, chain: dict, tmp_path: Path) -> dict:
    values = {"data": chain["data"], "prog": chain["prog"], "art": chain.get("art", ""),
              "missing": str(tmp_path / "no-such-folder"), "empty": str(tmp_path / "empty"),
              "file": str(tmp_path / "a-file.png")}
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file.png").write_bytes(b"")
    if kind == "no-model":
        values["prog"] = _edited_program(chain, tmp_path, model=None)
    if kind == "other-size":  # the metadata names the model at 64x64: not the one the program was exported from
        values["prog"] = _edited_program(chain, tmp_path, model_kwargs={**chain["kwargs"], "img_size": 64})
    return values


SIM, RUN, SWEEP = ["simulate", "{prog}"], ["run", "{prog}"], ["sensor", "sweep", "--program", "{prog}"]
BENCH = ["bench", "{art}", "--program", "{prog}", "--fp32", "none", "--min-runs", "1", "--min-seconds", "0"]

# (id, argv with {placeholders}, setup kind, words the error line must contain)
CASES = [
    ("simulate-missing-folder", [*SIM, "--data", "{missing}"], "", ["--data {missing}", "does not exist",
                                                                     "fashion-mnist"]),
    ("run-missing-folder", [*RUN, "--data", "{missing}"], "", ["--data {missing}", "does not exist"]),
    ("sweep-missing-folder", [*SWEEP, "--data", "{missing}"], "", ["--data {missing}", "does not exist"]),
    ("bench-missing-folder", [*BENCH, "--data", "{missing}"], "", ["--data {missing}", "does not exist"]),
    ("simulate-a-file", [*SIM, "--data", "{file}"], "", ["--data {file}", "a file, not a folder"]),
    ("simulate-empty-folder", [*SIM, "--data", "{empty}"], "", ["{empty}", "ImageNet layout", "subfolder"]),
    ("sweep-empty-folder", [*SWEEP, "--data", "{empty}"], "", ["{empty}", "ImageNet layout"]),
    ("bench-empty-folder", [*BENCH, "--data", "{empty}"], "", ["{empty}", "ImageNet layout"]),
    ("simulate-fmnist-for-rgb", SIM, "", ["{prog}", "takes 3x32x32", "1x28x28", "--data FOLDER"]),
    ("run-fmnist-for-rgb", RUN, "", ["{prog}", "takes 3x32x32", "--data FOLDER"]),
    ("bench-fmnist-for-rgb", BENCH, "", ["{prog}", "takes 3x32x32", "--data FOLDER", "--check-images 0"]),
    ("sweep-fmnist-for-rgb", SWEEP, "", ["{prog}", "takes input 3x32x32", "--data FOLDER"]),
    ("sweep-mono-sensor-for-rgb", [*SWEEP, "--data", "{data}", "--sensor", "mono-3um"], "",
     ["mono-3um", "monochrome", "RGB", "rggb-1.4um"]),
    ("simulate-program-without-model", [*SIM, "--data", "{data}"], "no-model",
     ["{prog}", "names no float model", "pfcr export"]),
    ("simulate-preprocessing-other-size", [*SIM, "--data", "{data}"], "other-size",
     ["3x64x64", "{prog} takes 3x32x32", "re-export"]),
    ("bench-data-without-program", ["bench", "{art}", "--data", "{data}"], "", ["--data {data}", "--program"]),
]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, kind, words", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_data(argv, kind, words, chain, tmp_path, capsys, request):
    if argv[0] == "bench":
        pytest.importorskip("tvm")
    values = _setup(kind, chain, tmp_path)
    results = tmp_path / "results"
    argv = [a.format(**values) for a in argv] + ["--results", str(results)]
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for word in words:
        assert word.format(**values) in lines[0], (word, lines[0])
    assert not list(results.rglob("*.json")), "a refused command wrote a record"
