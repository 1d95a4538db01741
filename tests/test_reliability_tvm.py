"""Bad input and interruptions of `pfcr compile`, `pfcr bench` and `pfcr emulate-pi` (issue 17): a
complete record is never replaced by an incomplete one, a silent RPC server or tracker is a clear
error within the timeout, a damaged library is refused before it is loaded, and no server process
outlives the command that started it. tests/conftest.py checks that no test leaves a process behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from cli.main import main, parser
from core.records import is_complete, write_record
from tvm_backends.build import compile_program
from tvm_backends.emulate import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def art(host_art, tmp_path) -> Path:
    """A private copy of the built artifact."""
    import shutil

    return Path(shutil.copytree(host_art[1], tmp_path / "art"))


def _bench(art: Path, results: Path, *extra: str) -> int:
    return main(["bench", str(art), "--fp32", "none", "--warmup", "2", "--min-runs", "20", "--min-seconds", "0.05",
                 "--results", str(results), *extra])


def _records(results: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(results.glob("bench_*.json"))}


# --- A complete record is never replaced by an incomplete one -------------------------------------

def _record(**metrics) -> dict:
    from core.records import make_record

    return make_record("bench", model={"name": "m", "checkpoint_sha256": None},
                       data={"name": "random-codes", "split": "latency", "size": 0},
                       config={"method": "tvm", "w_bits": 4, "a_bits": 4, "tag": "host"}, metrics=metrics, seed=0)


def test_write_record_keeps_a_complete_record(tmp_path):
    done = _record(runs=1228, complete=True)
    path = write_record(done, tmp_path)
    partial = write_record(_record(runs=0, complete=False), tmp_path)
    assert partial != path and partial.name.endswith(".partial.json")
    assert json.loads(path.read_text())["metrics"]["runs"] == 1228
    assert json.loads(partial.read_text())["partial"] is True
    # the same through the argument, for records whose metrics do not say
    assert write_record(_record(top1=0.1), tmp_path, complete=False) == partial
    # an incomplete record replaces an incomplete one; a complete one replaces both and drops the partial
    assert write_record(_record(runs=5, complete=False), tmp_path) == partial
    assert write_record(_record(runs=3000, complete=True), tmp_path) == path and not partial.exists()
    path.write_text(json.dumps({**json.loads(path.read_text()), "partial": True}))
    assert not is_complete(json.loads(path.read_text()))
    assert write_record(_record(runs=1, complete=False), tmp_path) == path  # nothing complete to keep


def _interrupt_after(monkeypatch, chunks: int) -> list[int]:
    """Runner.timer raises KeyboardInterrupt (Ctrl-C) at its call number `chunks + 1` (the warm-up is call 1)."""
    from tvm_backends import rpc

    real, calls = rpc.Runner.timer, []

    def timer(self, x, runs):
        calls.append(runs)
        if len(calls) > chunks:
            raise KeyboardInterrupt
        return real(self, x, runs)

    monkeypatch.setattr(rpc.Runner, "timer", timer)
    return calls


def test_interrupted_bench_never_replaces_a_complete_record(art, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    assert _bench(art, results) == 0
    ((name, complete),) = _records(results).items()
    assert complete["metrics"]["complete"] and complete["metrics"]["runs"] >= 20
    before = (results / name).read_bytes()

    _interrupt_after(monkeypatch, 1)  # Ctrl-C right after the warm-up: no timed run finished
    assert _bench(art, results) == 130
    assert "nothing recorded" in capsys.readouterr().out
    assert (results / name).read_bytes() == before and list(_records(results)) == [name]

    monkeypatch.undo()
    calls = _interrupt_after(monkeypatch, 3)  # two timed chunks finished: kept beside, marked partial
    assert _bench(art, results, "--min-runs", "100000") == 130
    assert (results / name).read_bytes() == before
    partial = _records(results)[name.removesuffix(".json") + ".partial.json"]
    assert partial["partial"] and not partial["metrics"]["complete"] and partial["latency"]["stopped"] == "interrupted"
    assert partial["metrics"]["runs"] == sum(calls[1:3]) > 0
    assert "INCOMPLETE" in capsys.readouterr().out


def test_interrupted_fp32_baseline_is_not_a_complete_record(art, tmp_path, monkeypatch):
    """Ctrl-C during the FP32 baseline's runs: exit 130 and the record says incomplete (it said complete, exit 0)."""
    from tvm_backends import commands

    def fp32_timer(args, art, remote, emulated, log):
        def timer(k):
            raise KeyboardInterrupt

        return "torch-eager", timer

    monkeypatch.setattr(commands, "_fp32_timer", fp32_timer)
    results = tmp_path / "results"
    assert _bench(art, results) == 130
    (record,) = _records(results).values()
    assert record["partial"] and not record["metrics"]["complete"] and record["fp32"]["stopped"] == "interrupted"


def test_ctrl_c_before_anything_finished_says_so(art, tmp_path, monkeypatch, capsys):
    from tvm_backends import rpc

    def connect(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(rpc, "connect", connect)
    assert _bench(art, tmp_path / "results", "--rpc", "127.0.0.1:9") == 130
    err = capsys.readouterr().err
    assert "nothing was recorded" in err and "were kept" not in err
    assert not (tmp_path / "results").exists() or not _records(tmp_path / "results")


# --- A port that accepts and never answers ----------------------------------------------------------

@pytest.fixture
def silent_port():
    """A local port that accepts connections and never sends a byte; yields 'host:port'."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    conns, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conns.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for c in conns:  # unblocks the client thread still waiting in TVM's handshake
        c.close()
    listener.close()


@pytest.mark.parametrize("how", ["--rpc", "--tracker"])
def test_silent_server_or_tracker_is_an_error_within_the_timeout(art, silent_port, tmp_path, capsys, how):
    where = [how, silent_port] + (["--key", "pi5"] if how == "--tracker" else [])
    t0 = time.monotonic()
    assert _bench(art, tmp_path / "results", *where, "--timeout", "1.5") == 2
    assert time.monotonic() - t0 < 15
    err = capsys.readouterr().err
    assert silent_port in err and "did not answer" in err and "within 1.5 s" in err
    assert ("TVM RPC server" if how == "--rpc" else "TVM RPC tracker") in err
    assert "Traceback" not in err and not list(tmp_path.rglob("bench_*.json"))


def test_timeout_and_counts_are_checked_by_the_parser(capsys):
    for argv in (["bench", "a", "--timeout", "0"], ["bench", "a", "--check-images", "-5"],
                 ["bench", "a", "--min-runs", "0"], ["bench", "a", "--min-seconds", "nan"],
                 ["bench", "a", "--warmup", "-1"], ["bench", "a", "--threads", "0"],
                 ["compile", "p", "--target", "host", "--out", "o", "--batch", "0"],
                 ["emulate-pi", "--port", "70000"]):
        with pytest.raises(SystemExit) as exit_:
            parser().parse_args(argv)
        assert exit_.value.code == 2, argv
        assert "error: argument" in capsys.readouterr().err


def test_results_folder_is_checked_before_measuring(art, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert _bench(art, blocker / "results") == 2
    err = capsys.readouterr().err
    assert "cannot write result records to" in err and "--results" in err


def test_compile_checks_its_outputs_before_building(host_art, tmp_path, capsys):
    prog, _ = host_art
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["compile", str(prog), "--target", "host", "--out", str(blocker)]) == 2
    assert "is a file; an artifact is a folder" in capsys.readouterr().err
    assert main(["compile", str(prog), "--target", "host", "--out", str(tmp_path / "art"),
                 "--results", str(blocker / "results")]) == 2
    assert "cannot write result records" in capsys.readouterr().err and not (tmp_path / "art").exists()


def test_check_images_must_fit_the_program(tmp_path, fake_fmnist, capsys):
    """--check-images feeds 1x28x28 Fashion-MNIST codes; a program for 3x16x16 images is told so, not a traceback."""
    from intprog.arith import quantize_multiplier
    from intprog.program import Program

    p = Program(input={"name": "image", "shape": [3, 16, 16], "scale": 1 / 255, "zero_point": 0, "qmin": 0,
                       "qmax": 255}, output={"name": "logits", "scale": 1e-3}, meta={"model": "rgb", "w_bits": 8,
                                                                                   "a_bits": 8})
    m, s = quantize_multiplier(np.full(4, 1e-4))
    full = np.ones(4, dtype=np.int64)
    x = p.add("patchify", ["image"], "patches", {"patch": 8})
    x = p.add("linear", [x], "fc", {"in_zp": 0, "rounding": "half_up", "weight_bits": 8},
              {"weight": np.ones((4, 192), np.int8), "weight_zp": np.zeros(4, np.int64), "bias": np.zeros(4, np.int64),
               "multiplier": m, "shift": s, "out_zp": full * 0, "qmin": full * -(1 << 31),
               "qmax": full * ((1 << 31) - 1)})
    p.add("take_token", [x], "logits", {"index": 0})
    prog = p.save(tmp_path / "rgb.intprog.safetensors")
    art = compile_program(prog, "host", tmp_path / "rgb").path
    assert _bench(art, tmp_path / "results", "--program", str(prog), "--check-images", "4") == 2
    err = capsys.readouterr().err
    assert "takes 3x16x16" in err and "--check-images 0" in err
    assert _bench(art, tmp_path / "results", "--program", str(prog), "--check-images", "0") == 0


# --- A damaged library is refused before it is loaded -----------------------------------------------

def _edit_meta(art: Path, edit) -> None:
    meta = json.loads((art / "artifact.json").read_text())
    edit(meta)
    (art / "artifact.json").write_text(json.dumps(meta))


def test_truncated_library_whose_hash_matches_is_refused_not_a_bus_error(art, tmp_path):
    """model.so cut in half and artifact.json made to match it (hash and size): loading it killed
    `pfcr bench` with a bus error (exit 135) and nothing printed."""
    from core.files import sha256_file

    lib = art / "model.so"
    lib.write_bytes(lib.read_bytes()[: lib.stat().st_size // 2])

    def match(meta):
        meta["build"].update(library_sha256=sha256_file(lib), library_bytes=lib.stat().st_size)

    _edit_meta(art, match)
    proc = subprocess.run([sys.executable, "-m", "cli.main", "bench", str(art), "--fp32", "none",
                           "--results", str(tmp_path / "results")], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert f"{lib} is truncated" in proc.stderr and "pfcr compile" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_library_of_another_size_or_cpu_is_refused(art, tmp_path, capsys):
    lib = art / "model.so"
    size = lib.stat().st_size
    with open(lib, "ab") as f:
        f.write(b"\0" * 16)
    assert _bench(art, tmp_path) == 2
    err = capsys.readouterr().err
    assert f"{lib} has {size + 16} bytes" in err and f"records {size}" in err and "pfcr compile" in err
    with open(lib, "r+b") as f:
        f.truncate(size)

    def aarch64(meta):  # an artifact.json of an older suite (no ELF facts) for a Pi
        meta["build"].pop("elf")
        meta["target"]["tvm"]["mtriple"] = "aarch64-linux-gnu"

    _edit_meta(art, aarch64)
    assert _bench(art, tmp_path) == 2
    assert "holds code for x86_64" in capsys.readouterr().err
    lib.write_bytes(b"not a library" + b"\0" * (size - 13))
    assert _bench(art, tmp_path) == 2
    assert "is not a shared library" in capsys.readouterr().err


def test_damaged_fp32_baseline_is_rebuilt_not_loaded(art, monkeypatch):
    from tvm_backends import baseline
    from tvm_backends.artifact import Artifact

    a = Artifact.load(art)
    built = []

    def fake_build(mod, preset, lib):
        import shutil

        shutil.copy(a.library, lib)
        built.append(lib)
        return {"library_bytes": lib.stat().st_size, "library_sha256": baseline.sha256_file(lib)}

    monkeypatch.setattr(baseline, "compile_module", fake_build)
    monkeypatch.setattr("core.models.load_program_model", lambda model: type("M", (), {"module": _Tiny()})())
    lib = baseline.compile_fp32(a)
    assert baseline.compile_fp32(a) == lib and len(built) == 1  # cached
    lib.write_bytes(lib.read_bytes()[:1000])
    assert baseline.compile_fp32(a) == lib and len(built) == 2  # truncated: rebuilt


class _Tiny:
    """Stands in for the float model behind the tiny program (only exported, never run)."""

    def __new__(cls):
        import torch

        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 5))


# --- emulate-pi's server never outlives it -----------------------------------------------------------

_FAKE_SERVE = """
import os, sys
from pathlib import Path
from tvm_backends import emulate

LISTEN = "import socket, sys, time; s = socket.create_server(('127.0.0.1', int(sys.argv[1]))); time.sleep(600)"
emulate.prepare = lambda cache=None, log=print: Path(cache)
emulate.command = lambda cache, port, host, tracker, key: ([sys.executable, "-c", LISTEN, str(port)], dict(os.environ))
from cli.main import main
sys.exit(main(["emulate-pi", "--port", sys.argv[1], "--cache", sys.argv[2]]))
"""


def _children(pid: int) -> list[int]:
    from tests.conftest import _children as children

    return children(pid)


def _gone(pid: int, timeout: float = 10) -> bool:
    from tests.conftest import _state

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _state(pid) in (None, "Z"):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_emulate_pi_server_does_not_outlive_it(tmp_path, sig):
    """`pfcr emulate-pi` killed (SIGTERM, or even SIGKILL): its server (qemu, here a stand-in that
    listens) goes with it and frees the port. It used to stay, holding the port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _FAKE_SERVE, str(port), str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the stand-in server did not come up"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        (server,) = _children(proc.pid)
        os.kill(proc.pid, sig)
        assert proc.wait(30) == (0 if sig == signal.SIGTERM else -sig)
        assert _gone(server), "the server outlived `pfcr emulate-pi`"
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))  # the port is free again
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def test_emulate_pi_names_a_port_in_use(tmp_path, capsys):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["emulate-pi", "--port", str(port), "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "--port" in err
