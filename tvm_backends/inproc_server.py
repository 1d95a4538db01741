"""A TVM RPC server that serves each session in its own process, without re-executing Python.

TVM's stock server starts workers by re-running sys.executable, which fails under qemu-user
without binfmt (the emulated Pi). This one reuses TVM's listen loop (direct or via a tracker) and
serves every session in the current process. Standalone: it imports only tvm, so it runs on the
emulated Pi (and on a real board: `python3 inproc_server.py --port 9090`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
from pathlib import Path

EMULATED_FUNC = "pfcr.device.emulated"  # a remote function that only emulated devices define


def _serve_in_process(sock, addr, opts, load_library) -> None:
    from tvm.rpc import server
    from tvm.support import utils

    work = utils.tempdir()
    old = os.getcwd()
    os.chdir(work.path)
    try:
        server._serve_loop(sock, load_library, work)
    finally:
        os.chdir(old)
        work.remove()
        with contextlib.suppress(OSError):  # TVM's server loop may have closed it already
            sock.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--tracker", default=None, help="host:port of an RPC tracker to register with")
    p.add_argument("--key", default="", help="device key announced to the tracker")
    p.add_argument("--ready-file", default=None, help="touched once the server listens")
    p.add_argument("--emulated", default=None, help="announce to clients that this device is emulated (this "
                   "text), so that its timings are never taken for latency")
    args = p.parse_args()

    import tvm_ffi
    from tvm.rpc import server

    if args.emulated:
        tvm_ffi.register_global_func(EMULATED_FUNC, lambda: args.emulated)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1)
    tracker = None
    if args.tracker:
        host, port = args.tracker.rsplit(":", 1)
        tracker = (host, int(port))
    server._serving = _serve_in_process  # the one change to TVM's loop: no worker process
    print(f"RPC server listening on {args.host}:{args.port}", flush=True)
    if args.ready_file:
        Path(args.ready_file).touch()
    # A direct client sends an empty key; through a tracker the key names the device.
    server._listen_loop(sock, args.port, args.key if tracker else "", tracker, None, None)


if __name__ == "__main__":
    main()
