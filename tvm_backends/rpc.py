"""Running an artifact: in this process, or on a board through TVM RPC (direct or via a tracker).

A `Runner` loads the library on its device and runs the Relax VM there; `time_runs` times single
inferences with the VM's time_evaluator, which measures on the device itself (over RPC the network
is not in the timings). Connection problems become RemoteError with the address and the fix.

TVM's RPC calls block without limit, so every call to a board or tracker (the handshake, the
tracker's replies, each upload, inference or timed chunk) runs on a helper thread and is waited
for at most `timeout` seconds: a port that accepts and never answers is an error naming the
address, never a hang.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import SuiteError

START_SERVER = ("start one on the board with `python3 -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090` "
                "(or an emulated Pi here with `pfcr emulate-pi --port 9090`)")


DEFAULT_TIMEOUT = 60.0  # seconds a board or tracker may take to answer one call
CONNECT_TIMEOUT = 10.0  # at most this long for the TCP connection itself


class RemoteError(SuiteError):
    """An RPC server or tracker that cannot be reached, or that went away during a run."""


class RemoteTimeout(RemoteError):
    """A board or tracker that did not answer a call in time."""


def call_with_timeout(fn: Callable[[], Any], timeout: float, message: str) -> Any:
    """fn() on a daemon thread, waited for at most `timeout` seconds: its value, or its exception,
    or RemoteTimeout(message) when it has not returned by then (the thread is left blocked in the
    call until the peer closes; it never keeps the process alive). Ctrl-C interrupts the wait."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the waiting thread
            box["error"] = err
        finally:
            done.set()

    threading.Thread(target=target, name="pfcr-rpc-call", daemon=True).start()
    if not done.wait(timeout):
        raise RemoteTimeout(message)
    if "error" in box:
        raise box["error"]
    return box["value"]


def parse_address(text: str, what: str) -> tuple[str, int]:
    """'host:port' -> (host, port); RemoteError on anything else."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RemoteError(f"{what} {text!r} is not of the form host:port, e.g. 192.168.1.20:9090")
    return host, int(port)


def _probe(host: str, port: int, what: str, hint: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail fast (TVM's own connect retries for a minute) when nothing listens at host:port."""
    try:
        socket.create_connection((host, port), timeout=min(timeout, CONNECT_TIMEOUT)).close()
    except TimeoutError:
        raise RemoteError(f"cannot reach the {what} at {host}:{port}: no answer to the connection within "
                          f"{min(timeout, CONNECT_TIMEOUT):g} s (a firewall, or a wrong address?); {hint}") from None
    except OSError as err:
        raise RemoteError(f"cannot reach the {what} at {host}:{port} ({err.strerror or err}); {hint}") from None


@dataclass
class Remote:
    """Where an artifact runs: None for this process, else an open RPC session and how it was reached."""

    session: Any = None
    address: str | None = None
    key: str | None = None
    via_tracker: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT

    def call(self, fn: Callable[[], Any], what: str) -> Any:
        """fn() here, or, for a board, within `timeout` seconds (RemoteLost naming the address and `what`)."""
        if self.session is None:
            return fn()
        try:
            return call_with_timeout(fn, self.timeout, "")
        except RemoteTimeout:
            raise RemoteLost(f"{self.address} did not answer {what} within {self.timeout:g} s (the board hangs, "
                             "is overloaded, or the network dropped); check the board's RPC server, or allow "
                             "longer with --timeout") from None

    def describe(self) -> dict[str, Any]:
        if self.session is None:
            return {"where": "local"}
        return {"where": "rpc", "address": self.address, "key": self.key, "tracker": self.via_tracker, **self.info}


def connect(rpc: str | None = None, tracker: str | None = None, key: str | None = None,
            session_timeout: float = 0, timeout: float = DEFAULT_TIMEOUT) -> Remote:
    """Open an RPC session directly (rpc='host:port') or through a tracker (tracker='host:port', key);
    `info["emulated"]` says what emulates the device when the server announces one (the emulated Pi).
    Every call waits at most `timeout` seconds for an answer (RemoteError naming the address)."""
    remote = _open(rpc, tracker, key, session_timeout, timeout)
    if remote.session is not None:
        from tvm_backends.inproc_server import EMULATED_FUNC

        def announced() -> str | None:
            try:
                return str(remote.session.get_function(EMULATED_FUNC)())
            except Exception:  # a real board's server does not define it
                return None

        emulated = remote.call(announced, "its first call")
        if emulated is not None:
            remote.info["emulated"] = emulated
    return remote


TRACKER_HINT = "start one with `python3 -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190`"


def _open(rpc: str | None, tracker: str | None, key: str | None, session_timeout: float,
          timeout: float = DEFAULT_TIMEOUT) -> Remote:
    if rpc is None and tracker is None:
        return Remote(timeout=timeout)
    import tvm.rpc

    if rpc is not None:
        host, port = parse_address(rpc, "--rpc")
        _probe(host, port, "RPC server", START_SERVER, timeout)
        silent = (f"the RPC server at {rpc} accepted the connection but did not answer TVM RPC's handshake within "
                  f"{timeout:g} s; check that {rpc} is a TVM RPC server (not another service on that port) and that "
                  f"no other client holds it (a server serves one session at a time); {START_SERVER}")
        try:
            session = call_with_timeout(lambda: tvm.rpc.connect(host, port, session_timeout=session_timeout),
                                        timeout, silent)
        except RemoteError:
            raise
        except Exception as err:  # TVM raises RuntimeError/TVMError subclasses alike
            raise RemoteError(f"{rpc} accepted the connection but is not a TVM RPC server ({_first_line(err)}); "
                              f"{START_SERVER}") from None
        return Remote(session, rpc, timeout=timeout)
    if not key:
        raise RemoteError("--tracker needs --key, the device key the board registered with (e.g. --key pi5)")
    host, port = parse_address(tracker, "--tracker")
    _probe(host, port, "RPC tracker", TRACKER_HINT, timeout)

    def ask_tracker():
        session = tvm.rpc.connect_tracker(host, port)
        return session, session.summary()

    silent = (f"the RPC tracker at {tracker} accepted the connection but did not answer within {timeout:g} s; "
              f"check that {tracker} is a TVM RPC tracker (not another service on that port); {TRACKER_HINT}")
    try:
        tracker_session, summary = call_with_timeout(ask_tracker, timeout, silent)
    except RemoteError:
        raise
    except Exception as err:
        raise RemoteError(f"{tracker} is not a TVM RPC tracker ({_first_line(err)})") from None
    keys = sorted({item["key"].split(":", 1)[-1] for item in summary.get("server_info", [])})
    if key not in keys:
        raise RemoteError(f"no board with key {key!r} is registered at the tracker {tracker} (registered: "
                          f"{', '.join(keys) or 'none'}); on the board run `python3 -m tvm.exec.rpc_server "
                          f"--tracker {tracker} --key {key}`")
    busy = (f"the tracker {tracker} handed out no answering board with key {key!r} within {timeout:g} s (every "
            f"such board busy with another client, or the board it chose does not answer); check the board's "
            f"rpc_server, or allow longer with --timeout")
    try:
        session = call_with_timeout(
            lambda: tracker_session.request(key, priority=1, session_timeout=session_timeout, max_retry=2),
            timeout, busy)
    except RemoteError:
        raise
    except Exception as err:
        raise RemoteError(f"the tracker {tracker} could not hand out a board with key {key!r} "
                          f"({_first_line(err)})") from None
    return Remote(session, tracker, key, via_tracker=True, timeout=timeout)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__


class RemoteLost(RemoteError):
    """The board stopped answering in the middle of a run."""


class Runner:
    """An artifact's library loaded on its device (local or remote), ready to run its `main`."""

    def __init__(self, library: str | Path, device: str, remote: Remote | None = None) -> None:
        import tvm
        from tvm.runtime.vm import VirtualMachine  # not tvm.relax: a runtime-only TVM has no compiler

        self.remote = remote or Remote()
        library = Path(library)
        where = self.remote.address or "this machine"
        try:
            if self.remote.session is None:
                if device == "cuda" and not tvm.cuda(0).exist:
                    raise RemoteError(f"{library} runs on a CUDA GPU and this machine has none; run it on the "
                                      "board with --rpc or --tracker")
                module = tvm.runtime.load_module(str(library))
                self.dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
                self.vm = VirtualMachine(module, self.dev)
            else:
                sess = self.remote.session

                def load():
                    sess.upload(str(library), target=library.name)
                    module = sess.load_module(library.name)
                    dev = sess.cuda(0) if device == "cuda" else sess.cpu(0)
                    return dev, VirtualMachine(module, dev)

                self.dev, self.vm = self.remote.call(load, f"the upload and loading of {library}")
        except RemoteError:
            raise
        except Exception as err:
            raise RemoteError(f"could not load {library} on {where} ({_first_line(err)}); check that the "
                              "artifact's target matches the device") from None

    def tensor(self, x: np.ndarray):
        import tvm

        return tvm.runtime.tensor(np.ascontiguousarray(x), self.dev)

    def run(self, x: np.ndarray) -> np.ndarray:
        """One inference: input codes (already in the artifact's input dtype) -> output integers."""
        return self.remote.call(lambda: self.vm["main"](self.tensor(x)).numpy(), "an inference")

    def timer(self, x: np.ndarray, runs: int) -> list[float]:
        """Time `runs` single inferences on the device; their seconds. Over RPC, any failure is RemoteLost."""
        def timed() -> list[float]:
            self.vm.set_input("main", self.tensor(x))
            evaluate = self.vm.time_evaluator("invoke_stateful", self.dev, number=1, repeat=runs)
            return list(evaluate("main").results)

        try:
            return self.remote.call(timed, f"a chunk of {runs} timed runs")
        except RemoteLost:
            raise
        except Exception as err:
            if self.remote.session is None:
                raise
            raise RemoteLost(f"{self.remote.address} stopped answering ({_first_line(err)})") from None
