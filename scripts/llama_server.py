#!/usr/bin/env python3
"""Run llama.cpp's own HTTP server (from the PyPI wheel `xllamacpp`) in the
foreground, on 127.0.0.1 only, until SIGTERM/SIGINT.

Used by scripts/llama-server.sh (start), which runs it in the background; tests
may also run it directly with the venv python that `llama-server.sh path` prints:

    python scripts/llama_server.py --model M.gguf [--port 0] [--parallel 4] \
        [--ctx 8192] [--threads N] [--ready-file F]

--port 0 (the default) lets the server bind a free port itself (no race). Once
the HTTP server listens, the address `http://127.0.0.1:PORT` is printed on a
line of its own starting with "LISTENING " and, with --ready-file, written to
that file (atomically, by rename). Readiness still means GET /health == 200.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="llama.cpp HTTP server on 127.0.0.1 (xllamacpp)")
    ap.add_argument("--model", required=True, help="path of a .gguf model")
    ap.add_argument("--port", type=int, default=0, help="TCP port; 0 = any free port (default)")
    ap.add_argument("--parallel", type=int, default=4, help="slots = concurrent sequences (default 4)")
    ap.add_argument("--ctx", type=int, default=8192,
                    help="total KV cache size in tokens, split evenly over the slots (default 8192)")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads for decode and prefill (default 1; 0 = all cores). More than "
                         "one stalls badly when other processes compete for the cores")
    ap.add_argument("--batch", type=int, default=2048, help="logical batch size (n_batch)")
    ap.add_argument("--alias", default="", help="model name reported by /v1/models (default: file path)")
    ap.add_argument("--ready-file", default="", help="write the listening address here once up")
    ap.add_argument("--verbose", action="store_true", help="llama.cpp's debug logs")
    a = ap.parse_args(argv)

    if not os.path.isfile(a.model):
        print(f"llama_server.py: no model file at {a.model}", file=sys.stderr)
        return 2

    try:  # own session/process group, detached from the caller's terminal
        os.setsid()
    except OSError:
        pass  # already a session or group leader

    import xllamacpp as xlc  # imported late so --help works without it

    threads = a.threads or os.cpu_count() or 2
    p = xlc.CommonParams()
    p.model.path = a.model
    p.hostnames = ["127.0.0.1"]  # never listen anywhere else
    p.port = a.port
    p.n_parallel = a.parallel
    p.n_ctx = a.ctx
    p.n_batch = a.batch
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    p.endpoint_metrics = True
    p.endpoint_slots = True
    p.endpoint_props = True
    p.cont_batching = True
    p.warmup = True
    p.ui = False
    p.offline = True  # never try to download anything
    if a.alias:
        p.model_alias = {a.alias}
    if not a.verbose:
        p.verbosity = 3  # llama.cpp default (info); keeps the log readable

    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        server = xlc.Server(p)  # loads the model, starts the HTTP thread
    except RuntimeError as e:  # details are in llama.cpp's log lines above
        print(f"llama_server.py: llama.cpp server did not start: {e}", file=sys.stderr)
        return 1
    addr = server.listening_address
    if not addr.startswith("http"):
        addr = "http://" + addr
    print(f"LISTENING {addr}", flush=True)
    if a.ready_file:
        tmp = a.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(addr + "\n")
        os.replace(tmp, a.ready_file)

    while not stop.wait(0.5):
        pass
    print("llama_server.py: stopping", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the server's threads are native, and a plain
    # exit may wait on them. The OS frees the socket and memory.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
