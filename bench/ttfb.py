#!/usr/bin/env python3
"""SSE time-to-first-event probe for bench/run.sh (stdlib only).

usage: ttfb.py PORT N

Sends N streaming completion requests one after another on one keep-alive HTTP/1.1
connection to 127.0.0.1:PORT and measures, per request, the time from the request's last
byte to the first `data:` event of the response body and to the end of the body.
Prints one JSON line: ttfe (time to first event) and e2e p50/p99 in µs. The probe's own
overhead is the same whichever target it talks to, so differences between targets are
what the proxy adds.
"""
import json
import socket
import sys
import time

BODY = b'{"model":"sim-7b","prompt":"benchmark","max_tokens":16,"stream":true}'
REQ = (b"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
       b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def one(sock, buf):
    """One request; returns (ttfe_s, e2e_s, leftover bytes)."""
    t0 = time.perf_counter()
    sock.sendall(REQ)
    t_first_event = None
    # Head.
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed before the response head")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    status = head.split(b"\r\n", 1)[0]
    if b" 200" not in status:
        raise RuntimeError(f"status {status!r}")
    lower = head.lower()
    if b"transfer-encoding: chunked" not in lower:
        raise RuntimeError("expected a chunked SSE response")
    # Chunked body.
    while True:
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed mid-body")
            buf += chunk
        size_line, rest = buf.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0], 16)
        while len(rest) < size + 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed mid-chunk")
            rest += chunk
        data, buf = rest[:size], rest[size + 2:]
        if t_first_event is None and b"data:" in data:
            t_first_event = time.perf_counter()
        if size == 0:
            break
    t_end = time.perf_counter()
    return (t_first_event or t_end) - t0, t_end - t0, buf


def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    ttfe, e2e = [], []
    deadline = time.monotonic() + 60
    for _ in range(n):
        a, b, buf = one(sock, buf)
        ttfe.append(a)
        e2e.append(b)
        if time.monotonic() > deadline:
            break
    sock.close()
    us = lambda s: int(s * 1e6)
    print("BENCH " + json.dumps({
        "requests": len(ttfe),
        "ttfe_p50_us": us(pct(ttfe, 50)), "ttfe_p99_us": us(pct(ttfe, 99)),
        "e2e_p50_us": us(pct(e2e, 50)), "e2e_p99_us": us(pct(e2e, 99)),
    }))


if __name__ == "__main__":
    main()
