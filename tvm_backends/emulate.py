"""An emulated Raspberry Pi: aarch64 CPython with the TVM runtime under qemu-user, serving TVM RPC.

Built once into a cache folder (about a minute, needs Debian's mirror and PyPI), then started in
seconds: a `debootstrap --foreign` stage one of Debian bookworm arm64 (minbase + python3) whose
packages are unpacked with `dpkg -x`, and the aarch64 wheels of apache-tvm, apache-tvm-ffi and numpy
installed beside it (runtime only). qemu-aarch64-static runs its python3 with `-L root`, no binfmt
needed. It checks correctness over RPC; it runs about 25x slower than a Pi, so its timings are never
latency (records mark them emulated).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

from core.errors import SuiteError
from tvm_backends.cache import cache_dir

SUITE = "bookworm"
MIRROR = os.environ.get("PFCR_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PLATFORM = "manylinux_2_28_aarch64"
PYTHON = "3.11"  # bookworm's python3
WHEELS = ("apache-tvm", "apache-tvm-ffi", "numpy", "typing-extensions")  # at the versions installed here
HOST_PACKAGES = {"qemu-aarch64-static": "qemu-user-static", "debootstrap": "debootstrap"}
SERVER = Path(__file__).with_name("inproc_server.py")
DESCRIPTION = f"qemu-aarch64-static user-mode emulation of a Raspberry Pi (Debian {SUITE} arm64)"
# Only the runtime is used on the device: the compiler library is most of the wheel.
_DROP = ("tvm/lib/libtvm_compiler.so", "tvm/3rdparty", "tvm/src", "tvm/include", "tvm/web")


class EmulatorError(SuiteError):
    """The emulated Pi cannot be prepared or started."""


def default_cache() -> Path:
    return cache_dir() / "emulated-pi"


def _need_host_tools() -> None:
    missing = [pkg for tool, pkg in HOST_PACKAGES.items() if shutil.which(tool) is None]
    if missing:
        raise EmulatorError(f"the emulated Pi needs Debian's {' '.join(missing)}: apt-get install {' '.join(missing)} "
                            "(or run scripts/system-deps.sh)")


def _run(cmd: list[str], what: str, **kw) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise EmulatorError(f"{what} failed ({' '.join(cmd[:3])} ... exit {proc.returncode}):\n  " + "\n  ".join(tail))


def _rootfs(cache: Path, log) -> Path:
    """Debian arm64 with python3: debootstrap stage one, then every downloaded package unpacked."""
    root = cache / "root"
    done = cache / ".rootfs-done"
    if done.exists():
        return root
    if os.geteuid() != 0:
        raise EmulatorError(f"building the emulated Pi's root file system ({root}) needs root (debootstrap); "
                            "run `pfcr emulate-pi --prepare` once as root, or point --cache at a prepared folder")
    shutil.rmtree(root, ignore_errors=True)
    log(f"emulated Pi: debootstrap {SUITE} arm64 (minbase + python3) from {MIRROR} into {root}")
    _run(["debootstrap", "--foreign", "--variant=minbase", "--arch=arm64", "--include=python3", SUITE, str(root),
          MIRROR], "debootstrap (needs the network to reach the Debian mirror)", timeout=900)
    debs = sorted((root / "var/cache/apt/archives").glob("*.deb"))
    log(f"emulated Pi: unpacking {len(debs)} packages")
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"unpacking {deb.name}")
    done.touch()
    return root


def _site(cache: Path, log) -> Path:
    """aarch64 wheels of the TVM runtime and numpy, installed into a folder on the device's sys.path."""
    pins = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    site = cache / "site"
    stamp = cache / ".site-done"
    if stamp.exists() and stamp.read_text() == " ".join(pins):
        return site
    shutil.rmtree(site, ignore_errors=True)
    log(f"emulated Pi: installing {' '.join(pins)} ({PLATFORM}) into {site}")
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
          "--only-binary=:all:", "--platform", PLATFORM, "--python-version", PYTHON, "--implementation", "cp",
          "--target", str(site), *pins], "pip install of the aarch64 wheels (needs PyPI)", timeout=1800)
    for rel in _DROP:
        p = site / rel
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    stamp.write_text(" ".join(pins))
    return site


def prepare(cache: Path | None = None, log=print) -> Path:
    """Build (or reuse) the emulated Pi in `cache`; returns the cache folder."""
    _need_host_tools()
    cache = Path(cache or default_cache())
    cache.mkdir(parents=True, exist_ok=True)
    _rootfs(cache, log)
    _site(cache, log)
    return cache


def command(cache: Path, port: int, host: str = "127.0.0.1", tracker: str | None = None,
            key: str = "pi-emulated") -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run the RPC server on the emulated Pi."""
    root = cache / "root"
    argv = ["qemu-aarch64-static", "-L", str(root), str(root / "usr/bin/python3"), "-S", "-u", str(SERVER),
            "--host", host, "--port", str(port), "--key", key, "--emulated", DESCRIPTION]
    if tracker:
        argv += ["--tracker", tracker]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cache / "site"), "PYTHONNOUSERSITE": "1",
           "TVM_USE_RUNTIME_LIB": "1", "HOME": str(cache), "LANG": "C.UTF-8",
           "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return argv, env


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn that makes the child receive SIGTERM when this process dies, however it dies
    (SIGKILL included: Linux's PR_SET_PDEATHSIG); None where prctl is unavailable."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn(argv: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
    """Start the RPC server (qemu and the server it runs); it never outlives this process."""
    return subprocess.Popen(argv, env=env, preexec_fn=_parent_death_signal(), **kw)


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Terminate the server, kill it after `grace` seconds, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


class _Terminated(Exception):
    """SIGTERM or SIGHUP reached `serve`."""


def serve(argv: list[str], env: dict[str, str]) -> int:
    """Run the RPC server in the foreground until it exits or this process gets Ctrl-C, SIGTERM or
    SIGHUP; then stop it (the port is free when this returns). Its exit code, or 0 when stopped."""
    def on_signal(signum, frame):
        raise _Terminated

    signals = (signal.SIGTERM, signal.SIGHUP) if threading.current_thread() is threading.main_thread() else ()
    proc = spawn(argv, env)
    old = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        return proc.wait()
    except (KeyboardInterrupt, _Terminated):
        return 0
    finally:
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)  # a second SIGTERM does not cut the stopping short
        stop(proc)
        for sig, handler in old.items():
            signal.signal(sig, handler)


def check_port_free(host: str, port: int) -> None:
    """EmulatorError naming the port when something already listens there (e.g. another emulate-pi)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as err:
            raise EmulatorError(f"cannot serve on {host}:{port} ({err.strerror or err}); another server (an "
                                "earlier `pfcr emulate-pi`?) holds it: stop it, or choose another --port") from None


def _wait_ready(proc: subprocess.Popen, ready: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmulatorError(f"the emulated Pi's RPC server exited (code {proc.returncode}) while starting; "
                                f"its log: {ready.with_suffix('.log')}")
        if ready.exists():
            return
        time.sleep(0.2)
    raise EmulatorError(f"the emulated Pi's RPC server did not come up within {timeout:.0f} s; "
                        f"its log: {ready.with_suffix('.log')}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(port: int | None = None, cache: Path | None = None, tracker: str | None = None,
            key: str = "pi-emulated", timeout: float = 180.0, log=print) -> Iterator[tuple[str, int]]:
    """Start the emulated Pi's RPC server for the block; yields its (host, port)."""
    cache = prepare(cache, log)
    port = port or free_port()
    argv, env = command(cache, port, tracker=tracker, key=key)
    ready = cache / f"server-{port}.ready"
    ready.unlink(missing_ok=True)
    with open(ready.with_suffix(".log"), "w") as logfile:
        proc = spawn([*argv, "--ready-file", str(ready)], env, stdout=logfile, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, ready, timeout)
        yield "127.0.0.1", port
    finally:
        stop(proc)
        ready.unlink(missing_ok=True)
