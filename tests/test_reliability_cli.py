"""Bad input to PTQ and evaluation: `pfcr eval | quantize | export | run | train | simulate` (issue 17).

One table of (argv, setup, exit code, words the error must contain), run in-process: each bad input
exits 2 with one line `pfcr <command>: error: ...` that names the input and the fix, before any long
computation; never a traceback, never exit 0. Then the behaviours that replaced silent results:
classes and channels checked against the model, grayscale folders for one-channel models, record
names that keep another model's or artifact's record, default outputs that follow --results and
never overwrite the committed zoo.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from tests.conftest import USER_KWARGS, image_folder, user_model

USER = "vit_tiny_patch16_224"


# ---------------------------------------------------------------------------------------------
# setups: each makes its files under tmp_path and returns the values of the argv's placeholders


def _user(tmp_path: Path, classes: int = 2, **kw) -> dict:
    """A user's checkpoint ({ckpt}) and its --model-kwargs ({kwargs}); its weights are drawn from a
    seed of the folder's name, so two folders never hold the same checkpoint (the commands reseed
    torch's global generator)."""
    import hashlib

    import torch

    torch.manual_seed(int.from_bytes(hashlib.sha256(str(tmp_path).encode()).digest()[:4], "little"))
    ckpt, kwargs = user_model(tmp_path, num_classes=classes)
    if kw:
        from safetensors.torch import save_file

        from tests.conftest import tiny_vit

        kwargs = {**kwargs, **kw}
        save_file(tiny_vit(**kwargs).state_dict(), str(ckpt))
    return {"ckpt": str(ckpt), "kwargs": json.dumps(kwargs)}


def setup_none(tmp_path: Path) -> dict:
    return {}


def setup_more_classes(tmp_path: Path) -> dict:
    """A 2-class model and a 3-class folder."""
    image_folder(tmp_path / "data", ("a", "b", "c"), per_class=1)
    return {**_user(tmp_path, classes=2), "data": str(tmp_path / "data")}


def setup_two_channel_model(tmp_path: Path) -> dict:
    """A model of 2 input channels: no image folder gives those."""
    image_folder(tmp_path / "data", ("a", "b"), per_class=1)
    return {**_user(tmp_path, classes=2, in_chans=2), "data": str(tmp_path / "data")}


def setup_truncated_image(tmp_path: Path) -> dict:
    """A folder whose b/1.png is cut in half."""
    image_folder(tmp_path / "data", ("a", "b"), per_class=2)
    bad = tmp_path / "data" / "b" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])
    return {**_user(tmp_path), "data": str(tmp_path / "data")}


def setup_not_an_image(tmp_path: Path) -> dict:
    """A folder with a text file named a/notes.jpg."""
    image_folder(tmp_path / "data", ("a", "b"), per_class=2)
    (tmp_path / "data" / "a" / "notes.jpg").write_text("not an image\n")
    return {**_user(tmp_path), "data": str(tmp_path / "data")}


def setup_truncated_train_image(tmp_path: Path) -> dict:
    """train/ and val/ folders; val/ holds a truncated image: quantize must find it before quantizing."""
    for split in ("train", "val"):
        image_folder(tmp_path / "data" / split, ("a", "b"), per_class=4)
    bad = tmp_path / "data" / "val" / "a" / "3.png"
    bad.write_bytes(bad.read_bytes()[:70])
    return {**_user(tmp_path), "data": str(tmp_path / "data")}


def setup_small_train_val(tmp_path: Path) -> dict:
    """train/ and val/ folders of 8 images each."""
    for split in ("train", "val"):
        image_folder(tmp_path / "data" / split, ("a", "b"), per_class=4)
    return {**_user(tmp_path), "data": str(tmp_path / "data")}


def setup_unwritable(tmp_path: Path) -> dict:
    """{ro}: a folder that cannot be written (under a plain file; root ignores permission bits)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    return {"ro": str(blocker / "results")}


def _tiny_program(path: Path, edit=None, meta=None) -> Path:
    """A two-layer integer program on 28x28 images (the shape of tests/test_tvm_build.py's), saved as is
    after `edit(graph, consts)`: what a hand edit makes."""
    from safetensors.numpy import save_file

    from intprog.arith import quantize_multiplier
    from intprog.program import Program, _pack_weights

    rng = np.random.default_rng(0)
    p = Program(input={"name": "image", "shape": [1, 28, 28], "scale": 1 / 255, "zero_point": 0, "qmin": 0,
                       "qmax": 255}, output={"name": "logits", "scale": 1e-3},
                meta={"model": "vit_fmnist", "w_bits": 8, "a_bits": 8} if meta is None else meta)

    def requant(n: int, real: float, qmin: int, qmax: int) -> dict:
        m, s = quantize_multiplier(np.full(n, real))
        return {"multiplier": m, "shift": s, "out_zp": np.zeros(n, np.int64), "qmin": np.full(n, qmin),
                "qmax": np.full(n, qmax)}

    x = p.add("patchify", ["image"], "patches", {"patch": 7})
    x = p.add("linear", [x], "fc1", {"in_zp": 3, "rounding": "half_up", "weight_bits": 8},
              {"weight": rng.integers(-8, 8, (8, 49)).astype(np.int8), "weight_zp": np.zeros(8, np.int64),
               "bias": rng.integers(-500, 500, 8), **requant(8, 1 / 3000, -128, 127)})
    x = p.add("linear", [x], "fc2", {"in_zp": 0, "rounding": "half_up", "weight_bits": 8},
              {"weight": rng.integers(-8, 8, (10, 8)).astype(np.int8), "weight_zp": np.zeros(10, np.int64),
               "bias": rng.integers(-50, 50, 10), **requant(10, 0.7, -(1 << 31), (1 << 31) - 1)})
    p.add("take_token", [x], "logits", {"index": 0})
    graph, consts = _pack_weights(p.graph(), p.consts)
    if edit:
        edit(graph, consts)
    save_file(consts, str(path), metadata={"program": json.dumps(graph)})
    return path


def setup_program(tmp_path: Path) -> dict:
    return {"prog": str(_tiny_program(tmp_path / "p.intprog.safetensors"))}


def setup_program_missing_attr(tmp_path: Path) -> dict:
    return {"prog": str(_tiny_program(tmp_path / "p.intprog.safetensors",
                                      lambda g, c: g["ops"][1]["attrs"].pop("in_zp")))}


def setup_program_shift_99(tmp_path: Path) -> dict:
    return {"prog": str(_tiny_program(tmp_path / "p.intprog.safetensors",
                                      lambda g, c: c.update({"fc2.shift": np.full_like(c["fc2.shift"], 99)})))}


def setup_program_token_99(tmp_path: Path) -> dict:
    return {"prog": str(_tiny_program(tmp_path / "p.intprog.safetensors",
                                      lambda g, c: g["ops"][3]["attrs"].update(index=99)))}


def setup_program_transposed_weight(tmp_path: Path) -> dict:
    return {"prog": str(_tiny_program(tmp_path / "p.intprog.safetensors",
                                      lambda g, c: c.update({"fc1.weight": np.ascontiguousarray(c["fc1.weight"].T)})))}


def setup_program_negative_head_dim(tmp_path: Path) -> dict:
    """split_heads with dim -8 (the tiny program has no attention: one is added)."""
    def edit(g: dict, c: dict) -> None:
        g["ops"].insert(2, {"op": "split_heads", "in": ["fc1"], "out": "heads", "attrs": {"start": 0, "dim": -8,
                                                                                           "heads": 2}, "consts": {}})
    return {"prog": str(_tiny_program(tmp_path / "p.intprog.safetensors", edit))}


def setup_program_ops_not_a_list(tmp_path: Path) -> dict:
    return {"prog": str(_tiny_program(tmp_path / "p.intprog.safetensors", lambda g, c: g.update(ops="linear")))}


def setup_program_without_model(tmp_path: Path) -> dict:
    return {"prog": str(_tiny_program(tmp_path / "p.intprog.safetensors", meta={}))}


@pytest.fixture(scope="module")
def quantized_pair(tmp_path_factory):
    """A user's model quantized at W8A8 (twice, two seeds) and at W4A4, and the program of the first
    W8A8 one: for `run --quantized` with the wrong file."""
    root = tmp_path_factory.mktemp("qpair")
    user = _user(root)
    for split in ("train", "val"):
        image_folder(root / "data" / split, ("a", "b"), per_class=4)
    base = ["quantize", USER, "--checkpoint", user["ckpt"], "--model-kwargs", user["kwargs"], "--data",
            str(root / "data"), "--method", "rtn", "--calib-size", "8", "--results", str(root / "results")]
    for name, bits, seed in (("q8", "W8A8", "0"), ("q8b", "W8A8", "1"), ("q4", "W4A4", "0")):
        assert main([*base, "--bits", bits, "--seed", seed, "--out", str(root / f"{name}.safetensors")]) == 0
    assert main(["export", USER, "--checkpoint", user["ckpt"], "--model-kwargs", user["kwargs"], "--quantized",
                 str(root / "q8.safetensors"), "--data", str(root / "data"), "--calib-size", "8",
                 "--results", str(root / "results")]) == 0
    return {**user, "data": str(root / "data"), "prog": str(root / "q8.intprog.safetensors"),
            **{n: str(root / f"{n}.safetensors") for n in ("q8", "q8b", "q4")}}


def setup_quantized_pair(tmp_path: Path, pair: dict) -> dict:
    """(Takes the module's quantized_pair fixture: see test_bad_input.)"""
    return pair


def setup_quantized_other_checkpoint(tmp_path: Path, pair: dict) -> dict:
    """The quantized files, and another checkpoint of the same architecture as {other} (the pair's,
    its head bias changed)."""
    from safetensors.torch import load_file, save_file

    state = load_file(pair["ckpt"])
    state["head.bias"] = state["head.bias"] + 1
    save_file(state, str(tmp_path / "other.safetensors"))
    return {**pair, "other": str(tmp_path / "other.safetensors")}


UK = ["--checkpoint", "{ckpt}", "--model-kwargs", "{kwargs}"]
Q = ["quantize", "vit_fmnist"]
E = ["eval", "vit_fmnist"]
X = ["export", "vit_fmnist", "--quantized", "q.safetensors"]
R = ["run", "p.intprog.safetensors"]
T = ["train", "vit_fmnist"]
S = ["simulate", "p.intprog.safetensors"]
HEADLESS = json.dumps({"num_classes": 0, "img_size": 28, "in_chans": 1, "patch_size": 7, "embed_dim": 16,
                       "depth": 1, "num_heads": 2})

# (id, argv with {placeholders}, setup, exit code, words the error line must contain)
CASES = [
    # numeric arguments, refused by the parser
    ("quantize-iters-negative", [*Q, "--iters", "-5"], setup_none, 2, ["--iters", "-5", "at least 0"]),
    ("quantize-drop-prob-2", [*Q, "--drop-prob", "2"], setup_none, 2, ["--drop-prob", "probability", "0 to 1"]),
    ("quantize-drop-prob-nan", [*Q, "--drop-prob", "nan"], setup_none, 2, ["--drop-prob", "finite"]),
    ("quantize-calib-size-0", [*Q, "--calib-size", "0"], setup_none, 2, ["--calib-size", "at least 1"]),
    ("quantize-recon-batch-0", [*Q, "--recon-batch-size", "0"], setup_none, 2, ["--recon-batch-size", "at least 1"]),
    ("quantize-round-lr-0", [*Q, "--round-lr", "0"], setup_none, 2, ["--round-lr", "above 0"]),
    ("quantize-scale-lr-negative", [*Q, "--scale-lr", "-0.001"], setup_none, 2, ["--scale-lr", "above 0"]),
    ("quantize-bits-w9", [*Q, "--bits", "W9A4"], setup_none, 2, ["--bits W9A4", "weight bits 9", "2..8"]),
    ("quantize-bits-a1", [*Q, "--bits", "W4A1"], setup_none, 2, ["--bits W4A1", "activation bits 1", "2..8"]),
    ("quantize-bits-text", [*Q, "--bits", "4bit"], setup_none, 2, ["--bits", "'4bit'", "W<bits>A<bits>"]),
    ("quantize-attn-bits-1", [*Q, "--attn-bits", "1"], setup_none, 2, ["--attn-bits", "2..8"]),
    ("quantize-input-bits-16", [*Q, "--input-bits", "16"], setup_none, 2, ["--input-bits", "2..8"]),
    ("quantize-coarsest-negative", [*Q, "--coarsest", "-1"], setup_none, 2, ["--coarsest", "at least 0"]),
    ("quantize-limit-0", [*Q, "--limit", "0"], setup_none, 2, ["--limit", "at least 1"]),
    ("quantize-iters-text", [*Q, "--iters", "many"], setup_none, 2, ["--iters", "'many'", "whole number"]),
    ("eval-limit-negative", [*E, "--limit", "-9990"], setup_none, 2, ["--limit", "-9990", "at least 1"]),
    ("eval-limit-0", [*E, "--limit", "0"], setup_none, 2, ["--limit", "at least 1"]),
    ("eval-batch-size-0", [*E, "--batch-size", "0"], setup_none, 2, ["--batch-size", "at least 1"]),
    ("eval-seed-negative", [*E, "--seed", "-1"], setup_none, 2, ["--seed", "at least 0"]),
    ("export-calib-size-0", [*X, "--calib-size", "0"], setup_none, 2, ["--calib-size", "at least 1"]),
    ("export-check-images-0", [*X, "--check-images", "0"], setup_none, 2, ["--check-images", "at least 1"]),
    ("export-min-cosine-nan", [*X, "--min-cosine", "nan"], setup_none, 2, ["--min-cosine", "finite"]),
    ("run-limit-0", [*R, "--limit", "0"], setup_none, 2, ["--limit", "at least 1"]),
    ("run-batch-size-negative", [*R, "--batch-size", "-3"], setup_none, 2, ["--batch-size", "at least 1"]),
    ("train-epochs-0", [*T, "--epochs", "0"], setup_none, 2, ["--epochs", "at least 1"]),
    ("train-lr-negative", [*T, "--lr", "-1"], setup_none, 2, ["--lr", "above 0"]),
    ("train-batch-size-0", [*T, "--batch-size", "0"], setup_none, 2, ["--batch-size", "at least 1"]),
    ("train-threads-negative", [*T, "--threads", "-2"], setup_none, 2, ["--threads", "at least 0"]),
    # simulate checks its numbers first thing in the command (tests/test_hwsim_accel_timing.py wants
    # main() to return 2 for them), before the program, the data or the results folder is touched
    ("simulate-limit-0", [*S, "--limit", "0"], setup_none, 2, ["--limit 0", "at least 1"]),
    ("simulate-limit-negative", [*S, "--limit", "-5"], setup_none, 2, ["--limit -5", "at least 1"]),
    ("simulate-batch-size-0", [*S, "--batch-size", "0"], setup_none, 2, ["--batch-size 0", "at least 1"]),
    ("simulate-acc-bits-4", [*S, "--acc-bits", "4"], setup_none, 2, ["--acc-bits 4", "8..48"]),
    ("simulate-acc-bits-99", [*S, "--acc-bits", "99"], setup_none, 2, ["--acc-bits 99", "8..48"]),
    # the data does not fit the model
    ("eval-deit-on-fmnist", ["eval", "deit_tiny_patch16_224", "--limit", "10"], setup_none, 2,
     ["deit_tiny_patch16_224", "3x224x224", "1x28x28", "--data FOLDER", "--model-kwargs"]),
    ("eval-headless-model", ["eval", USER, "--model-kwargs", HEADLESS, "--limit", "5"], setup_none, 2,
     [USER, "no classifier head", "num_classes=0", "--model-kwargs", "--checkpoint"]),
    ("eval-more-classes-than-outputs", ["eval", USER, *UK, "--data", "{data}"], setup_more_classes, 2,
     ["{data}", "3 classes", "2 outputs"]),
    ("quantize-more-classes-than-outputs", ["quantize", USER, *UK, "--data", "{data}", "--method", "rtn"],
     setup_more_classes, 2, ["3 classes", "2 outputs"]),
    ("eval-two-channel-model", ["eval", USER, *UK, "--data", "{data}"], setup_two_channel_model, 2,
     ["2-channel", "{data}", "grayscale (1) or RGB (3)"]),
    ("eval-truncated-image", ["eval", USER, *UK, "--data", "{data}"], setup_truncated_image, 2,
     ["{data}/b/1.png", "cannot be read", "replace or remove"]),
    ("eval-not-an-image", ["eval", USER, *UK, "--data", "{data}"], setup_not_an_image, 2,
     ["{data}/a/notes.jpg", "cannot be read", "replace or remove"]),
    ("quantize-calib-size-above-folder", ["quantize", USER, *UK, "--data", "{data}", "--method", "rtn",
                                          "--calib-size", "100"], setup_small_train_val, 2,
     ["calibration size 100", "8 images", "--calib-size of at most 8"]),
    ("quantize-truncated-val-image", ["quantize", USER, *UK, "--data", "{data}", "--method", "rtn", "--calib-size",
                                      "4"], setup_truncated_train_image, 2, ["{data}/val/a/3.png", "cannot be read"]),
    # folders that cannot be written, found before anything is computed
    ("eval-results-unwritable", [*E, "--results", "{ro}"], setup_unwritable, 2, ["{ro}", "cannot be written",
                                                                                 "--results"]),
    ("quantize-results-unwritable", [*Q, "--results", "{ro}"], setup_unwritable, 2, ["{ro}", "--results"]),
    ("quantize-out-unwritable", [*Q, "--out", "{ro}/q.safetensors"], setup_unwritable, 2, ["{ro}", "--out"]),
    ("export-out-unwritable", [*X, "--out", "{ro}/p.safetensors"], setup_unwritable, 2, ["{ro}", "--out"]),
    ("run-results-unwritable", [*R, "--results", "{ro}"], setup_unwritable, 2, ["{ro}", "--results"]),
    ("train-out-unwritable", [*T, "--out", "{ro}", "--epochs", "1"], setup_unwritable, 2, ["{ro}", "--out"]),
    ("train-results-unwritable", [*T, "--results", "{ro}", "--epochs", "1"], setup_unwritable, 2,
     ["{ro}", "--results"]),
    ("simulate-results-unwritable", [*S, "--results", "{ro}"], setup_unwritable, 2, ["{ro}", "--results"]),
    # hand-edited programs
    ("run-program-missing-attribute", ["run", "{prog}"], setup_program_missing_attr, 2,
     ["{prog}", "op 1 (linear 'fc1')", "'in_zp'", "re-export"]),
    ("run-program-shift-99", ["run", "{prog}"], setup_program_shift_99, 2,
     ["{prog}", "op 2 (linear 'fc2')", "constant 'shift' holds 99..99, outside 0..62", "re-export"]),
    ("run-program-token-out-of-range", ["run", "{prog}"], setup_program_token_99, 2,
     ["op 3 (take_token 'logits')", "'index' = 99", "re-export"]),
    ("run-program-transposed-weight", ["run", "{prog}"], setup_program_transposed_weight, 2,
     ["op 1 (linear 'fc1')", "constant 'weight' of shape [49, 8]", "takes 8 inputs", "49 features"]),
    ("simulate-program-negative-head-dim", ["simulate", "{prog}"], setup_program_negative_head_dim, 2,
     ["op 2 (split_heads 'heads')", "'dim' = -8"]),
    ("simulate-program-ops-not-a-list", ["simulate", "{prog}"], setup_program_ops_not_a_list, 2,
     ["{prog}", "'ops' must be a list", "re-export"]),
    ("run-program-without-model", ["run", "{prog}"], setup_program_without_model, 2,
     ["{prog}", "meta.model", "pfcr export"]),
    # a --quantized file that is not the program's
    pytest.param("run-quantized-other-bits", ["run", "{prog}", "--quantized", "{q4}", "--data", "{data}"],
                 setup_quantized_pair, 2, ["--quantized {q4}", "{prog}", "w_bits is 4", "program's 8", "{q8}"],
                 marks=pytest.mark.slow, id="run-quantized-other-bits"),
    pytest.param("run-quantized-other-file", ["run", "{prog}", "--quantized", "{q8b}", "--data", "{data}"],
                 setup_quantized_pair, 2, ["--quantized {q8b}", "sha256", "{q8}"],
                 marks=pytest.mark.slow, id="run-quantized-other-file"),
    pytest.param("export-quantized-from-another-checkpoint",
                 ["export", USER, "--checkpoint", "{other}", "--model-kwargs", "{kwargs}", "--quantized", "{q8}",
                  "--data", "{data}"], setup_quantized_other_checkpoint, 2,
                 ["{q8}", "quantized from a checkpoint", "{other}", "--checkpoint it was made from"],
                 marks=pytest.mark.slow, id="export-quantized-from-another-checkpoint"),
]


def _case_id(case) -> str:
    return case[0] if type(case) is tuple else case.id


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `pfcr argv`, in-process; argparse's exit counts as its code."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("case_id, argv, setup, code, words",
                         [pytest.param(*c, id=c[0]) if type(c) is tuple else c for c in CASES])
def test_bad_input(case_id, argv, setup, code, words, tmp_path, results, capsys, request, monkeypatch):
    """Exit 2, one error line naming the input and the fix, no traceback, nothing recorded."""
    monkeypatch.chdir(tmp_path)  # relative outputs (runs/, q.safetensors) stay in the test's folder
    slow = setup in (setup_quantized_pair, setup_quantized_other_checkpoint)
    values = setup(tmp_path, request.getfixturevalue("quantized_pair")) if slow else setup(tmp_path)
    argv = [a.format(**values) if "{" in a and not a.startswith("{\"") else a for a in argv]
    words = [w.format(**values) for w in words]
    got, _, err = run_cli(argv, capsys)
    assert got == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not list(results.rglob("*.json")), "a refused command wrote a record"


def test_every_case_has_a_unique_id():
    ids = [_case_id(c) for c in CASES]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------------------------------------
# behaviours that replaced silent results


def test_random_weights_are_said_loudly(tmp_path, results, capsys):
    """A timm model without --checkpoint has random weights: a warning on stderr (the evaluation still
    runs: a smoke test of the pipeline is legitimate)."""
    kwargs = json.dumps({"img_size": 28, "in_chans": 1, "patch_size": 7, "num_classes": 10, "embed_dim": 16,
                         "depth": 1, "num_heads": 2})
    code, _, err = run_cli(["eval", USER, "--model-kwargs", kwargs, "--limit", "8"], capsys)
    assert code == 0 and "RANDOM weights" in err and "--checkpoint" in err
    rec = json.loads(next(results.glob("eval_*.json")).read_text())
    assert rec["config"]["tag"] == "random"  # in the record's name: never mixed with a trained model's
    code, _, err = run_cli(["eval", "vit_fmnist", "--limit", "8"], capsys)
    assert code == 0 and "RANDOM" not in err


def test_fewer_classes_than_outputs_is_a_warning_naming_both(tmp_path, results, capsys):
    """A one-class folder for a 3-class model: evaluated, with a warning naming both numbers."""
    user = _user(tmp_path, classes=3)
    image_folder(tmp_path / "data", ("only",), per_class=2)
    code, _, err = run_cli(["eval", USER, "--checkpoint", user["ckpt"], "--model-kwargs", user["kwargs"],
                            "--data", str(tmp_path / "data")], capsys)
    assert code == 0
    assert "has 1 classes but" in err and "3 outputs" in err


def test_rgb_folder_for_a_one_channel_model_is_read_as_grayscale(tmp_path, results, capsys):
    """The folder loader reads the model's channel count: grayscale (PIL convert("L")) for in_chans=1,
    with one-channel normalization; quantize and eval run (they were tracebacks)."""
    from core import data
    from core.models import load_model

    ckpt, kwargs = _user(tmp_path, classes=2, in_chans=1)["ckpt"], {**USER_KWARGS, "num_classes": 2, "in_chans": 1}
    for split in ("train", "val"):
        image_folder(tmp_path / "data" / split, ("a", "b"), per_class=3)
    loaded = load_model(USER, ckpt, **kwargs)
    ds = data.image_folder(tmp_path / "data" / "val", loaded.module)
    x, _ = ds[0]
    assert x.shape == (1, 32, 32)
    user = ["--checkpoint", ckpt, "--model-kwargs", json.dumps(kwargs), "--data", str(tmp_path / "data")]
    assert run_cli(["eval", USER, *user], capsys)[0] == 0
    code, _, err = run_cli(["quantize", USER, *user, "--method", "rtn", "--bits", "W8A8", "--calib-size", "4"], capsys)
    assert code == 0, err


def test_zoo_model_on_a_folder_gets_fashion_mnist_normalization(tmp_path):
    """A zoo model (1 channel, 28x28, trained on Fashion-MNIST) reads a folder of RGB images as
    grayscale 28x28 normalized as Fashion-MNIST is: the same input as the embedded data."""
    import torch
    from PIL import Image

    from core import data
    from core.models import load_model

    (tmp_path / "f" / "c").mkdir(parents=True)
    raw, _ = data.load_fmnist_arrays("test") if data.fmnist_dir().is_dir() else (None, None)
    if raw is None:
        pytest.skip("Fashion-MNIST is not installed")
    Image.fromarray(np.stack([raw[0]] * 3, axis=-1)).save(tmp_path / "f" / "c" / "0.png")
    model = load_model("vit_fmnist").module
    x, _ = data.image_folder(tmp_path / "f", model)[0]
    want = data.fmnist_to_tensor(raw[:1])[0]
    assert x.shape == want.shape == (1, 28, 28)
    assert torch.allclose(x, want, atol=1e-5)


def test_records_of_other_checkpoints_or_artifacts_do_not_replace_each_other(tmp_path, results, capsys):
    """Two checkpoints of one timm name: two eval records (each tagged with its checkpoint's sha256);
    a rerun of either replaces only its own. The zoo's own weights keep the plain name."""
    image_folder(tmp_path / "data", ("a", "b"), per_class=2)
    names = []
    for sub in ("one", "two"):
        (tmp_path / sub).mkdir()
        user = _user(tmp_path / sub)
        argv = ["eval", USER, "--checkpoint", user["ckpt"], "--model-kwargs", user["kwargs"],
                "--data", str(tmp_path / "data")]
        assert run_cli(argv, capsys)[0] == 0
        assert run_cli(argv, capsys)[0] == 0  # the rerun replaces its own record
        names.append(sorted(p.name for p in results.glob("eval_*.json")))
    from core.files import sha256_file

    assert len(names[1]) == 2
    for sub in ("one", "two"):
        sha = sha256_file(tmp_path / sub / "mine.safetensors")
        assert any(f"ck{sha[:8]}" in n for n in names[1])
    assert run_cli(["eval", "vit_fmnist", "--limit", "4"], capsys)[0] == 0
    assert (results / "eval_vit_fmnist_fashion-mnist_test_fp32_seed0.json").exists()


def test_distinct_record_keeps_another_artifacts_record(tmp_path):
    """core.records.distinct_record: a record of the same name made from another artifact file gets the
    artifact path's digest in its tag; the same artifact keeps its name."""
    from core.records import distinct_record, record_name, write_record
    from tests.test_records import _record

    first = {**_record(), "artifact": str(tmp_path / "a.intprog.safetensors")}
    write_record(first, tmp_path)
    assert distinct_record(first, tmp_path) == first
    other = {**_record(), "artifact": str(tmp_path / "b.intprog.safetensors")}
    moved = distinct_record(other, tmp_path)
    assert moved["config"]["tag"].startswith("a") and record_name(moved) != record_name(first)
    write_record(moved, tmp_path)
    assert distinct_record(other, tmp_path) == moved  # stable: the rerun writes the same file
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_ensure_writable(tmp_path):
    from core.errors import SuiteError
    from core.files import ensure_writable

    assert ensure_writable(tmp_path / "new" / "deep") == tmp_path / "new" / "deep"
    assert not list((tmp_path / "new" / "deep").iterdir())  # the probe is gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(SuiteError, match=r"cannot be written .* pass a writable folder with --out"):
        ensure_writable(tmp_path / "file" / "sub", "--out")
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(SuiteError, match="cannot be written"):
            ensure_writable(ro)


def test_full_disk_is_named_not_a_traceback(tmp_path, monkeypatch):
    """A write that fails for lack of space (ENOSPC) is a SuiteError naming the file."""
    import errno

    from core.errors import SuiteError
    from core.files import atomic_write

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(SuiteError, match=r"cannot write .*out\.json \(No space left on device\)"):
        atomic_write(tmp_path / "out.json", "{}")
    assert not list(tmp_path.iterdir())  # no temporary file left behind


def test_quantize_default_output_follows_results(tmp_path, results, capsys, monkeypatch):
    """quantize without --out writes under <results>/quantized/ (it wrote under ./results/quantized
    whatever --results said), and the name carries a user checkpoint's digest."""
    monkeypatch.chdir(tmp_path)
    user = _user(tmp_path)
    for split in ("train", "val"):
        image_folder(tmp_path / "data" / split, ("a", "b"), per_class=3)
    elsewhere = tmp_path / "elsewhere"
    code, out, err = run_cli(["quantize", USER, "--checkpoint", user["ckpt"], "--model-kwargs", user["kwargs"],
                              "--data", str(tmp_path / "data"), "--method", "rtn", "--bits", "W8A8",
                              "--calib-size", "4", "--results", str(elsewhere)], capsys)
    assert code == 0, err
    (q,) = (elsewhere / "quantized").glob("*.safetensors")
    assert q.name.startswith(f"{USER}_rtn_w8a8_seed0_ck") and str(q) in out
    assert not (tmp_path / "results").exists()


def test_train_never_writes_the_committed_zoo_by_default(tmp_path, results, fake_fmnist, capsys, monkeypatch):
    """`pfcr train` writes its weights and card under <results>/zoo/ (it overwrote core/zoo/)."""
    from core.files import sha256_file
    from core.models import ZOO

    monkeypatch.chdir(tmp_path)
    entry = ZOO["vit_fmnist"]
    before = sha256_file(entry.checkpoint), entry.card_path.read_text()
    code, out, err = run_cli(["train", "vit_fmnist", "--epochs", "1", "--batch-size", "32", "--threads", "1",
                              "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 0, err
    assert (results / "zoo" / "vit_fmnist.safetensors").exists() and (results / "zoo" / "vit_fmnist.json").exists()
    assert (sha256_file(entry.checkpoint), entry.card_path.read_text()) == before
    assert "the zoo's own weights are unchanged" in out
