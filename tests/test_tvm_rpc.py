"""`pfcr bench` through TVM RPC: a local server (the same in-process server the emulated Pi runs), a
tracker with device keys, unreachable and vanishing servers; the emulated Pi itself (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from cli.main import main
from tests.test_tvm_build import tiny_program
from tvm_backends import emulate
from tvm_backends.bench import Protocol, measure
from tvm_backends.build import compile_program
from tvm_backends.emulate import SERVER, free_port
from tvm_backends.rpc import RemoteError, Runner, connect


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited while starting"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(port)


def _start(argv: list[str], port: int) -> subprocess.Popen:
    """A server in a process group of its own, so that _stop reaches every process it starts (TVM's
    tracker runs in a popen_worker child that outlived its launcher when only the launcher was stopped)."""
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "TVM_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        _wait_port(port, proc)
    except BaseException:
        _stop(proc)
        raise
    return proc


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server's whole process group (SIGTERM, then SIGKILL after 10 s) and reap the server."""
    import signal

    def group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    group(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    group(signal.SIGKILL)  # whatever of the group is left (the tracker's worker ignores its launcher's end)
    proc.wait()


@pytest.fixture
def server():
    """A TVM RPC server on this machine (tvm_backends/inproc_server.py); yields 'host:port'."""
    port = free_port()
    proc = _start([sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", str(port)], port)
    yield f"127.0.0.1:{port}", proc
    _stop(proc)


def _bench(art: Path, results: Path, *extra: str) -> int:
    return main(["bench", str(art), "--fp32", "none", "--warmup", "2", "--min-runs", "20", "--min-seconds", "0.1",
                 "--results", str(results), *extra])


def _record(results: Path) -> dict:
    (path,) = sorted(results.glob("bench_*.json"))
    return json.loads(path.read_text())


def test_bench_over_rpc_is_bit_exact(host_art, server, fake_fmnist, tmp_path):
    prog, art = host_art
    address, _ = server
    assert _bench(art, tmp_path, "--rpc", address, "--program", str(prog), "--check-images", "12") == 0
    r = _record(tmp_path)
    assert r["metrics"]["bit_exact"] and r["metrics"]["runs"] >= 20
    assert r["device"]["where"] == "rpc" and r["device"]["address"] == address and not r["device"]["tracker"]


def test_bench_through_a_tracker_by_key(host_art, fake_fmnist, tmp_path, capsys):
    prog, art = host_art
    pytest.importorskip("tornado")  # TVM's tracker needs it (and cloudpickle)
    pytest.importorskip("cloudpickle")
    tport, sport = free_port(), free_port()
    tracker = _start([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(tport),
                      "--port-end", str(tport + 1)],
                     tport)
    board = _start([sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", str(sport),
                    "--tracker", f"127.0.0.1:{tport}", "--key", "board-x86"], sport)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the server registers a moment after it listens
            if _bench(art, tmp_path, "--tracker", f"127.0.0.1:{tport}", "--key", "board-x86",
                      "--program", str(prog), "--check-images", "4") == 0:
                break
            time.sleep(0.5)
        r = _record(tmp_path)
        assert r["metrics"]["bit_exact"] and r["device"]["tracker"] and r["device"]["key"] == "board-x86"
        capsys.readouterr()
        assert _bench(art, tmp_path, "--tracker", f"127.0.0.1:{tport}", "--key", "pi9") == 2
        err = capsys.readouterr().err
        assert "no board with key 'pi9'" in err and "board-x86" in err
    finally:
        _stop(board)
        _stop(tracker)


def test_unreachable_server_and_bad_addresses(host_art, tmp_path, capsys):
    _, art = host_art
    port = free_port()
    t0 = time.monotonic()
    assert _bench(art, tmp_path, "--rpc", f"127.0.0.1:{port}") == 2
    assert time.monotonic() - t0 < 30  # no minute-long retry loop
    err = capsys.readouterr().err
    assert f"cannot reach the RPC server at 127.0.0.1:{port}" in err and "rpc_server" in err
    assert _bench(art, tmp_path, "--tracker", f"127.0.0.1:{port}", "--key", "pi5") == 2
    assert "cannot reach the RPC tracker" in capsys.readouterr().err
    assert _bench(art, tmp_path, "--rpc", "pi.local") == 2
    assert "not of the form host:port" in capsys.readouterr().err
    with pytest.raises(RemoteError, match="needs --key"):
        connect(tracker=f"127.0.0.1:{port}")


def test_vanishing_server_keeps_finished_runs(host_art, server):
    """The server is killed during the benchmark: the runs finished before are kept, the failure named."""
    _, art = host_art
    address, proc = server
    runner = Runner(art / "model.so", "cpu", connect(address))
    x = np.zeros((1, 1, 28, 28), np.uint8)
    calls = []

    def timer(k):
        calls.append(k)
        if len(calls) == 3:
            proc.kill()
            proc.wait()
        return runner.timer(x, k)

    m = measure(timer, Protocol(warmup=1, min_runs=10**6, min_seconds=0), log=lambda s: None)
    assert not m.complete and m.stopped.startswith("remote failure") and len(m.runs_s) == calls[1]


def test_bench_loop_defaults_depend_on_where_it_runs():
    """A board gets a latency loop; the emulated Pi (timings are not latency, a 224x224 call takes
    minutes under qemu) one run and a long call timeout; what the user gives is kept."""
    from cli.main import parser
    from tvm_backends.commands import _protocol_defaults

    for emulated, want in ((False, (10, 100, 5.0, 60.0)), (True, (0, 1, 0.0, 600.0))):
        args = parser().parse_args(["bench", "art", *(["--emulated-pi"] if emulated else [])])
        _protocol_defaults(args, emulated)
        assert (args.warmup, args.min_runs, args.min_seconds, args.timeout) == want
    args = parser().parse_args(["bench", "art", "--emulated-pi", "--min-runs", "3", "--timeout", "5"])
    _protocol_defaults(args, True)
    assert (args.warmup, args.min_runs, args.timeout) == (0, 3, 5.0)


@pytest.mark.slow
def test_emulated_pi_is_bit_exact_over_rpc(tmp_path, fake_fmnist, monkeypatch):
    """aarch64 library on the emulated Pi 5 (qemu, RPC) == the reference, the register-tiled sdot GEMM
    included; timings recorded as emulated only.
    The first run builds the emulated Pi's cache (about 2 minutes, needs Debian's mirror and PyPI)."""
    import shutil

    if any(shutil.which(t) is None for t in (*emulate.HOST_PACKAGES, "aarch64-linux-gnu-gcc")):
        pytest.skip("needs qemu-user-static, debootstrap and gcc-aarch64-linux-gnu")
    prog = tiny_program(tmp_path / "tiny.intprog.safetensors", patch=4)  # one GEMM on sdot tiles, one generic
    art = compile_program(prog, "pi5", tmp_path / "pi5")
    assert art.meta["build"]["gemm_kernels"] == {"sdot": 1, "generic": 1}
    art = art.path
    results = tmp_path / "results"
    assert main(["bench", str(art), "--emulated-pi", "--program", str(prog), "--check-images", "8",
                 "--results", str(results)]) == 0  # the emulated loop's defaults: 0 warm-up, 1 run
    r = _record(results)
    assert r["emulated"] and r["metrics"]["emulated"] and r["metrics"]["bit_exact"]
    assert "p50_ms" not in r["metrics"] and "latency" not in r and r["emulated_timing"]["runs"] >= 1
    assert r["config"]["tag"] == "pi5-emulated"


def test_a_server_that_announces_emulation_never_gives_latency(host_art, fake_fmnist, tmp_path):
    """`pfcr emulate-pi` reached with plain --rpc: the server says it is emulated, so the record holds no
    latency; the same server serves one session after another."""
    prog, art = host_art
    port = free_port()
    proc = _start([sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", str(port),
                   "--emulated", "a test double"], port)
    try:
        for _ in range(2):
            assert _bench(art, tmp_path, "--rpc", f"127.0.0.1:{port}", "--program", str(prog),
                          "--check-images", "4") == 0
    finally:
        _stop(proc)
    r = _record(tmp_path)
    assert r["emulated"] and r["device"]["emulated"] == "a test double" and r["config"]["tag"] == "host-emulated"
    assert r["metrics"]["bit_exact"] and "p50_ms" not in r["metrics"] and "latency" not in r
