"""Shared fixtures: small generated stand-ins for the data and models users bring."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

# The tests' thread count is the suite's, not the machine's, so results (and their run time on the
# 2-core CI) do not depend on where they run; set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest


@pytest.fixture
def fake_fmnist(tmp_path, monkeypatch) -> Path:
    """A Fashion-MNIST folder of 60 train and 20 test random images, set as $PFCR_FMNIST_DIR."""
    from core.data import FMNIST_FILES, write_idx

    rng = np.random.default_rng(0)
    root = tmp_path / "fmnist"
    root.mkdir()
    for split, n in (("train", 60), ("test", 20)):
        img, lab = FMNIST_FILES[split]
        write_idx(root / img, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / lab, (np.arange(n) % 10).astype(np.uint8))
    monkeypatch.setenv("PFCR_FMNIST_DIR", str(root))
    return root


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "results"
    monkeypatch.setenv("PFCR_RESULTS", str(path))
    return path


def tiny_vit(**kw):
    """A 2-block timm ViT for 28x28 grayscale: fast stand-in for real models."""
    import timm

    args = {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10, "embed_dim": 16,
            "depth": 2, "num_heads": 2}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**args, **kw})


USER_KWARGS = {"img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 16, "depth": 2, "num_heads": 2}


def user_model(tmp_path: Path, num_classes: int) -> tuple[Path, dict]:
    """A user's own timm ViT checkpoint (safetensors) and the timm options it was built with."""
    from safetensors.torch import save_file

    kwargs = {**USER_KWARGS, "num_classes": num_classes}
    ckpt = tmp_path / "mine.safetensors"
    save_file(tiny_vit(**kwargs).state_dict(), str(ckpt))
    return ckpt, kwargs


def image_folder(root: Path, classes: tuple[str, ...], per_class: int, size: int = 32) -> Path:
    """An ImageNet-layout folder of random RGB images, one subfolder per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def zoo_program():
    """`zoo_program(bits, model="vit_fmnist")` -> (Program, test codes [64, 1, 28, 28] int64, labels [64]).

    A zoo model quantized by calibration alone (rtn, 128 seeded Fashion-MNIST training images) and
    exported: the real model's shapes and value ranges in seconds, cached for the session. bits is
    8, 4 or 3; model "vit_fmnist" or "swin_fmnist".
    """
    import functools

    import torch

    from core import data, models
    from pfcr.export import export_program
    from pfcr.quant.model import QuantConfig
    from pfcr.quantize import QuantizeConfig, quantize

    @functools.cache
    def build(bits: int, model: str = "vit_fmnist"):
        torch.manual_seed(0)
        fp = models.load_model(model).module.eval()
        calib, _ = data.fmnist_calibration(128, seed=0)
        x = calib.tensors[0]
        qm, _ = quantize(fp, x, QuantizeConfig(method="rtn", quant=QuantConfig(bits, bits), init_size=128))
        program = export_program(qm, x)
        test = data.fmnist("test", limit=64)
        return program, program.input_codes(test.tensors[0]), test.tensors[1].numpy()

    return build


# --- No process started by a test outlives it -------------------------------------------------
# pytest becomes a child subreaper (Linux), so a process orphaned by a test (a server's worker
# whose launcher was stopped) is re-parented to pytest instead of init and stays visible here.
# After each test, every live descendant of pytest that was not there before it is a leak: it gets
# a few seconds to exit, then it is killed and the test errors, naming it.

LEAK_GRACE_S = 5.0


def _children(pid: int) -> list[int]:
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _state(pid: int) -> str | None:
    """The process's state letter (Z: zombie), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _descendants(root: int) -> dict[int, str]:
    """Every descendant of `root`: pid -> state letter."""
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in _children(todo.pop()):
            state = _state(child)
            if child not in found and state is not None:
                found[child] = state
                todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200] or "?"
    except OSError:
        return "?"


@pytest.fixture(scope="session", autouse=True)
def _subreaper():
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass
    yield


@pytest.fixture(autouse=True)
def no_leaked_processes(_subreaper):
    """Fail a test that leaves a process running (or orphaned) behind; kill what it left."""
    me = os.getpid()
    before = set(_descendants(me))
    yield
    deadline = time.monotonic() + LEAK_GRACE_S
    while True:
        now = _descendants(me)
        for pid, state in now.items():  # reap orphans that exited (pytest is their reaper now)
            if state == "Z" and pid not in before and pid in _children(me):
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        leaked = {pid: _cmdline(pid) for pid, state in now.items() if pid not in before and state != "Z"}
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if leaked:
        for pid in leaked:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in leaked:
            if pid in _children(me):
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        pytest.fail("processes started by this test outlived it (now killed): "
                    + "; ".join(f"pid {pid}: {cmd}" for pid, cmd in leaked.items()), pytrace=False)


@pytest.fixture(scope="session")
def host_art(tmp_path_factory) -> tuple[Path, Path]:
    """(program, artifact folder): the tiny program of tests/test_tvm_build.py built for the host,
    once per session; copy the folder before damaging it."""
    from tests.test_tvm_build import tiny_program
    from tvm_backends.build import compile_program

    root = tmp_path_factory.mktemp("host_art")
    prog = tiny_program(root / "tiny.intprog.safetensors")
    return prog, compile_program(prog, "host", root / "art").path
