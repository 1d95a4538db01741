"""Target presets, `pfcr compile` artifacts (host, cross-compiled aarch64, CUDA cubins), `pfcr bench` on
the host (bit-exact check, latency protocol, interrupted runs), and the errors a user can cause."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from cli.main import main
from intprog.arith import quantize_multiplier
from intprog.program import Program
from tvm_backends import targets
from tvm_backends.bench import Protocol, measure
from tvm_backends.cuda import BuildError
from tvm_backends.cuda.cubin import check_cuda_library
from tvm_backends.rpc import RemoteLost


def _requant(n: int, real: float, zp: int, qmin: int, qmax: int) -> dict:
    m, s = quantize_multiplier(np.full(n, real))
    full = np.ones(n, dtype=np.int64)
    return {"multiplier": m, "shift": s, "out_zp": full * zp, "qmin": full * qmin, "qmax": full * qmax}


def tiny_program(path: Path, seed: int = 0, patch: int = 7) -> Path:
    """A two-layer integer program on 28x28 images (patchify, 4-bit linear, int32 head, class token):
    the real op kinds at a size that compiles in seconds. Patches of 7 give a 16 x 49 GEMM, which no
    dot-product kernel tiles (K % 4); patches of 4 a 49 x 16 one, which they do (rows padded)."""
    rng = np.random.default_rng(seed)
    p = Program(input={"name": "image", "shape": [1, 28, 28], "scale": 1 / 255, "zero_point": 0, "qmin": 0,
                       "qmax": 255},
                output={"name": "logits", "scale": 1e-3}, meta={"model": "tiny", "w_bits": 4, "a_bits": 4})
    x = p.add("patchify", ["image"], "patches", {"patch": patch})
    x = p.add("linear", [x], "fc1", {"in_zp": 3, "rounding": "half_up", "weight_bits": 4},
              {"weight": rng.integers(0, 16, (8, patch * patch)).astype(np.uint8), "weight_zp": rng.integers(6, 10, 8),
               "bias": rng.integers(-500, 500, 8), **_requant(8, 1 / 3000, 2, 0, 15)})
    x = p.add("linear", [x], "fc2", {"in_zp": 2, "rounding": "half_up", "weight_bits": 4},
              {"weight": rng.integers(-8, 8, (5, 8)).astype(np.int8), "weight_zp": np.zeros(5, np.int64),
               "bias": rng.integers(-50, 50, 5), **_requant(5, 0.7, 0, -(1 << 31), (1 << 31) - 1)})
    p.add("take_token", [x], "logits", {"index": 0})
    return p.save(path)


@pytest.fixture(scope="module")
def host_artifact(tmp_path_factory) -> tuple[Path, Path]:
    """(program file, artifact folder) of the tiny program compiled for the host."""
    root = tmp_path_factory.mktemp("tvm_host")
    prog = tiny_program(root / "tiny.intprog.safetensors")
    assert main(["compile", str(prog), "--target", "host", "--out", str(root / "art"),
                 "--results", str(root / "results")]) == 0
    return prog, root / "art"


def _bench(art: Path, results: Path, *extra: str) -> int:
    return main(["bench", str(art), "--fp32", "none", "--warmup", "2", "--min-runs", "20", "--min-seconds", "0.2",
                 "--results", str(results), *extra])


def _record(results: Path, kind: str) -> dict:
    (path,) = sorted(results.glob(f"{kind}_*.json"))
    return json.loads(path.read_text())


def test_presets_carry_the_right_cpus_and_architectures():
    assert targets.get("pi4").target["mcpu"] == "cortex-a72" and "+dotprod" not in targets.get("pi4").target["mattr"]
    assert targets.get("pi5").target["mattr"] == ["+neon", "+dotprod"]
    orin = targets.get("orin")  # alias
    assert orin.name == "jetson-orin" and orin.cuda_arch == "sm_87" and orin.target["host"]["mcpu"] == "cortex-a78ae"
    assert targets.get("jetson-xavier").cuda_arch == "sm_72" and targets.get("jetson-nano").cuda_arch == "sm_53"
    assert targets.resolve(targets.get("host"))["mcpu"] not in ("", "native")


def test_unknown_target_lists_the_known_ones(capsys, tmp_path):
    with pytest.raises(targets.TargetError, match="unknown target 'pi3'") as err:
        targets.get("pi3")
    assert all(name in str(err.value) for name in targets.PRESETS)
    prog = tiny_program(tmp_path / "p.safetensors")
    assert main(["compile", str(prog), "--target", "pi3", "--out", str(tmp_path / "a")]) == 2
    assert "jetson-orin" in capsys.readouterr().err


def test_missing_cross_toolchain_names_the_debian_package(monkeypatch):
    real = shutil.which
    monkeypatch.setattr(targets.shutil, "which", lambda name: None if "aarch64" in name else real(name))
    with pytest.raises(targets.TargetError, match="gcc-aarch64-linux-gnu"):
        targets.check_toolchain(targets.get("pi5"))


def test_missing_or_unfit_nvrtc_is_named(monkeypatch):
    from tvm_backends.cuda import nvrtc

    monkeypatch.setattr(targets.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(nvrtc, "_nvidia_dirs", lambda: [])
    nvrtc.library.cache_clear()
    with pytest.raises(targets.TargetError, match=r"jetson-nano.*pip install nvidia-cuda-nvrtc-cu12"):
        targets.check_toolchain(targets.get("jetson-nano"))
    nvrtc.library.cache_clear()
    monkeypatch.undo()

    class Cuda13:  # what CUDA 13's NVRTC lists: no Maxwell, Pascal or Volta
        version, archs = "13.0", ["sm_75", "sm_87", "sm_90"]

    monkeypatch.setattr(nvrtc, "library", lambda: Cuda13())
    monkeypatch.setattr(targets.shutil, "which", lambda name: f"/usr/bin/{name}")
    with pytest.raises(targets.TargetError, match=r"NVRTC 13\.0 does not compile CUDA kernels for sm_53"):
        targets.check_toolchain(targets.get("jetson-nano"))
    targets.check_toolchain(targets.get("jetson-orin"))  # sm_87 is listed: no error


def test_host_artifact_metadata_and_compile_record(host_artifact):
    prog, art = host_artifact
    meta = json.loads((art / "artifact.json").read_text())
    assert meta["target"]["preset"] == "host" and meta["batch"] == 1
    assert meta["input"] == {"name": "image", "shape": [1, 1, 28, 28], "dtype": "uint8", "scale": 1 / 255,
                             "zero_point": 0, "qmin": 0, "qmax": 255}
    assert meta["output"]["shape"] == [1, 5] and meta["output"]["scale"] == 1e-3
    from core.files import sha256_file

    assert meta["program"]["sha256"] == sha256_file(prog)
    assert meta["build"]["library_sha256"] == sha256_file(art / "model.so")
    assert {"tvm", "numpy", "python"} <= set(meta["versions"])
    record = _record(art.parent / "results", "compile")
    assert record["config"]["tag"] == "host" and record["metrics"]["library_bytes"] > 0


def test_host_bench_is_bit_exact_and_follows_the_protocol(host_artifact, fake_fmnist, tmp_path):
    prog, art = host_artifact
    assert _bench(art, tmp_path, "--program", str(prog), "--check-images", "20") == 0
    r = _record(tmp_path, "bench")
    m = r["metrics"]
    assert m["bit_exact"] and m["checked_images"] == 20 and m["mismatched_images"] == 0
    assert m["runs"] >= 20 and r["latency"]["wall_seconds"] >= 0.2 and r["latency"]["complete"]
    assert m["min_ms"] <= m["p50_ms"] <= m["p90_ms"] <= m["p99_ms"] <= m["max_ms"]
    assert len(r["latency"]["runs_ms"]) == m["runs"] and not r["emulated"] and r["device"] == {"where": "local"}


def test_bench_threads_are_recorded_and_tagged_apart(host_artifact, tmp_path):
    """--threads N > 1 is the record's config, environment and tag (beside the 1-thread record, not
    over it), and torch's thread count is back after the measurement (the main job runs its stages in one process)."""
    import torch

    prog, art = host_artifact
    before = torch.get_num_threads()
    for n in (1, 2):
        assert _bench(art, tmp_path, "--program", str(prog), "--check-images", "2", "--threads", str(n)) == 0
    records = {r["config"]["tag"]: r for r in map(json.loads, map(Path.read_text, tmp_path.glob("bench_*.json")))}
    assert set(records) == {"host", "host-t2"}
    assert records["host"]["config"]["threads"] == 1 and records["host-t2"]["config"]["threads"] == 2
    assert records["host-t2"]["environment"]["TVM_NUM_THREADS"] == "2"  # what ran, not what was restored after
    assert records["host-t2"]["metrics"]["bit_exact"] and torch.get_num_threads() == before


def test_bench_notices_outputs_that_differ(host_artifact, fake_fmnist, tmp_path, monkeypatch, capsys):
    """The check can fail: a runner that flips one output element is caught."""
    from tvm_backends import rpc

    prog, art = host_artifact
    real = rpc.Runner.run

    def wrong(self, x):
        out = real(self, x)
        out[0, 0] += 1
        return out

    monkeypatch.setattr(rpc.Runner, "run", wrong)
    assert _bench(art, tmp_path, "--program", str(prog), "--check-images", "4") == 2
    assert "NOT bit-exact" in capsys.readouterr().err
    assert _record(tmp_path, "bench")["metrics"]["mismatched_images"] == 4


def test_artifact_program_mismatch(host_artifact, tmp_path, capsys):
    _, art = host_artifact
    other = tiny_program(tmp_path / "other.safetensors", seed=1)
    assert _bench(art, tmp_path, "--program", str(other)) == 2
    err = capsys.readouterr().err
    assert "was compiled from" in err and "pfcr compile" in err and not list(tmp_path.glob("bench_*.json"))


def test_not_an_artifact(tmp_path, capsys):
    assert _bench(tmp_path, tmp_path) == 2
    assert "not a compiled artifact" in capsys.readouterr().err


def test_interrupted_bench_keeps_its_runs(host_artifact, tmp_path, monkeypatch):
    from tvm_backends import rpc

    _, art = host_artifact
    real, calls = rpc.Runner.timer, []

    def timer(self, x, runs):
        calls.append(runs)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, x, runs)

    monkeypatch.setattr(rpc.Runner, "timer", timer)
    assert _bench(art, tmp_path, "--min-runs", "100000") == 130
    r = _record(tmp_path, "bench")
    assert not r["metrics"]["complete"] and r["latency"]["stopped"] == "interrupted"
    assert r["metrics"]["runs"] == sum(calls[1:3]) > 0  # the two chunks after warm-up


def test_protocol_needs_both_min_runs_and_min_seconds():
    clock = {"calls": 0}

    def timer(k):
        clock["calls"] += 1
        return [1e-4] * k

    m = measure(timer, Protocol(warmup=1, min_runs=50, min_seconds=0.0, chunk_seconds=1e-3))
    assert m.complete and len(m.runs_s) >= 50 and m.stats()["p50_ms"] == pytest.approx(0.1)
    m = measure(timer, Protocol(warmup=1, min_runs=1, min_seconds=0.05, chunk_seconds=1e-3))
    assert m.wall_seconds >= 0.05


def test_remote_failure_keeps_finished_runs():
    calls = []

    def timer(k):
        calls.append(k)
        if len(calls) == 3:
            raise RemoteLost("127.0.0.1:9090 stopped answering (connection reset)")
        return [2e-3] * k

    m = measure(timer, Protocol(warmup=1, min_runs=10**6, min_seconds=0), log=lambda s: None)
    assert not m.complete and m.stopped.startswith("remote failure") and len(m.runs_s) == calls[1]


def test_cross_compiled_library_is_aarch64(tmp_path):
    if shutil.which(targets.AARCH64_CC) is None:
        pytest.skip("gcc-aarch64-linux-gnu is not installed")
    from tvm_backends.build import compile_program

    art = compile_program(tiny_program(tmp_path / "p.safetensors", patch=4), "pi5", tmp_path / "pi5")
    head = art.library.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    assert art.meta["target"]["tvm"]["mattr"] == ["+neon", "+dotprod"]
    # the Pi 5's GEMMs are s8 x s8 on sdot: the 49 x 16 one register-tiled, the 5-column head generic
    assert art.meta["build"]["gemm_operands"] == "s8 x s8"
    assert art.meta["build"]["gemm_kernels"] == {"sdot": 1, "generic": 1}
    code = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(art.library)], capture_output=True, text=True,
                          check=True).stdout
    assert "\tsdot\t" in code


def test_cuda_library_check_rejects_source_and_wrong_arch(tmp_path):
    lib = tmp_path / "x.so"
    lib.write_bytes(b"ELF ... extern \"C\" __global__ void k() {}")
    with pytest.raises(BuildError, match="embeds CUDA source"):
        check_cuda_library(lib, "sm_87")
    lib.write_bytes(b"\x7fELF host code")
    with pytest.raises(BuildError, match="holds no CUDA cubin"):
        check_cuda_library(lib, "sm_87")

    def cubin(abi: int, flags: int) -> bytes:  # the ELF header fields that identify a cubin's SM
        head = bytearray(64)
        head[:4], head[8] = b"\x7fELF", abi
        head[18:20], head[48:52] = (190).to_bytes(2, "little"), flags.to_bytes(4, "little")
        return bytes(head)

    lib.write_bytes(b"host" + cubin(7, 0x5A055A) + b"more host" + cubin(8, 0x6005A04))  # CUDA 12 and 13 layouts
    assert check_cuda_library(lib, "sm_90") == {"cubin": True, "cuda_source": False, "cuda_arch": "sm_90",
                                               "cubin_count": 2}
    with pytest.raises(BuildError, match="cubins for sm_90, not for sm_87"):
        check_cuda_library(lib, "sm_87")


@pytest.mark.parametrize("board, arch", [("jetson-nano", "sm_53"), ("jetson-xavier", "sm_72"),
                                         ("jetson-orin", "sm_87")])
def test_cuda_build_embeds_cubins_ahead_of_time(tmp_path, board, arch):
    """Kernels compiled by NVRTC (from PyPI, no CUDA toolkit) into the library as cubins for the
    board's GPU, no CUDA source left for the board, host code for the board's CPU."""
    if shutil.which(targets.AARCH64_CC) is None:
        pytest.skip("gcc-aarch64-linux-gnu is not installed")
    from tvm_backends.build import compile_program

    art = compile_program(tiny_program(tmp_path / "p.safetensors"), board, tmp_path / board)
    facts = check_cuda_library(art.library, arch)
    assert facts["cubin"] and not facts["cuda_source"] and art.meta["build"]["cuda_arch"] == arch
    assert art.meta["build"]["nvrtc"].startswith("12.")
    assert art.meta["build"]["kernel_launches"] >= 4  # at least one kernel per op of the tiny program
    assert int.from_bytes(art.library.read_bytes()[18:20], "little") == 183  # host code for the board's CPU


def test_report_shows_latency_beside_fp32_and_leaves_emulated_timings_out(host_artifact, fake_fmnist, tmp_path):
    from reports.latency import sections
    from reports.load import records_frame

    prog, art = host_artifact
    results = tmp_path / "results"
    assert main(["bench", str(art), "--fp32", "torch", "--warmup", "2", "--min-runs", "20", "--min-seconds", "0.1",
                 "--program", str(prog), "--check-images", "4", "--results", str(results)]) == 2  # no such zoo model
    assert not list(results.glob("bench_*.json"))  # the baseline fails before anything is measured
    shutil.copytree(art.parent / "results", results, dirs_exist_ok=True)  # the compile record
    assert _bench(art, results, "--program", str(prog), "--check-images", "4") == 0
    record = _record(results, "bench")
    emulated = {**record, "emulated": True, "metrics": {k: v for k, v in record["metrics"].items()
                                                       if not k.endswith("_ms") and k != "runs"},
                "config": {**record["config"], "tag": "pi5-emulated"}}
    emulated["metrics"]["emulated"] = True
    (results / "bench_emulated.json").write_text(json.dumps(emulated))
    # a benchmarks/bench_tvm_host.py record: TVM beside FP32 and onnxruntime, in its own table
    host_run = {**record, "config": {**record["config"], "method": "tvm-llvm-host"},
                "metrics": {"tvm_p50_ms": 1.5, "tvm_p90_ms": 1.7, "tvm_p99_ms": 1.9, "fp32_p50_ms": 3.0,
                            "ort_int8_p50_ms": 1.2, "speedup_vs_fp32_p50": 2.0, "speedup_vs_ort_int8_p50": 0.8,
                            "bit_exact": True}}
    (results / "bench_host_comparison.json").write_text(json.dumps(host_run))
    latency, host, checks, compiles = sections(records_frame(results), tmp_path / "report")
    assert list(latency.table["target"]) == ["host"] and latency.table["p50 ms"].iloc[0] > 0
    assert host.table[["build", "p50 ms", "FP32 / int p50", "onnxruntime / int p50"]].values.tolist() == [
        ["scheduled", 1.5, 2.0, 0.8]]
    assert latency.figures and latency.figures[0].path.exists()
    assert sorted(checks.table["target"]) == ["host", "pi5-emulated"] and checks.table["bit-exact"].all()
    assert list(compiles.table["target"]) == ["host"]
