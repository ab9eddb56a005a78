#!/usr/bin/env python3
"""Joins a load client's per-request measurements with `retrace sim --truth` (bench/run.sh).

usage: fidelity.py retrace|guidellm DIR

For GuideLLM, out.json may hold a sweep of concurrency levels: one line per level.

DIR holds truth.parquet (the sim's server-side times) and the client's output: out/ (a
`retrace replay` run: results-*.parquet) or out.json (GuideLLM's report). Prints one JSON
line: requests measured and joined with the truth, TTFT error (client TTFT − the sim's
arrival→first-token, µs) p50/p99, and schedule lateness p50/p99 (µs).

retrace sends `x-request-id`, which the sim writes to its truth file: rows join by id.
GuideLLM sends no id, but records the response's `id`, which the sim makes
`cmpl-<truth request_id>`: rows join by that. (Any row without it is matched to the truth
row with the nearest arrival time — the sim's clock is the wall clock at --speedup 1 — and
counted in `matched_by_time`.) GuideLLM's TTFT is first_token_iteration − request_start and
its lateness request_start − targeted_start, from its per-request timings.
"""
import bisect
import glob
import json
import os
import sys

import pyarrow.parquet as pq


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def truth(dir_, full=False):
    t = pq.read_table(os.path.join(dir_, "truth.parquet")).to_pydict()
    # engine_first_token_us: when the sim's engine emitted the token (first_token_us is when
    # its bytes went to the connection); absent in truth files of older sims.
    engine = t.get("engine_first_token_us") or t["first_token_us"]
    # handler_us: when the sim's handler started (arrival_us is when the request reached its
    # socket); absent in truth files of older sims, whose arrival was the handler's start.
    handler = t.get("handler_us") or t["arrival_us"]
    rows = {}
    for rid, arr, first, eng, hnd in zip(t["request_id"], t["arrival_us"], t["first_token_us"], engine, handler):
        if first is not None:
            rows[rid] = (arr, first - arr, first, eng, hnd) if full else (arr, first - arr)
    return rows


def summary(errors, lateness, requests, joined, extra=None):
    out = {
        "requests": requests, "joined": joined,
        "ttft_err_p50_us": pct(errors, 50), "ttft_err_p99_us": pct(errors, 99),
        "ttft_abs_err_p99_us": pct([abs(e) for e in errors], 99),
        "lateness_p50_us": pct(lateness, 50), "lateness_p99_us": pct(lateness, 99),
    }
    out.update(extra or {})
    return out


def retrace(dir_):
    tr = truth(dir_, full=True)
    files = sorted(glob.glob(os.path.join(dir_, "out", "results-*.parquet")))
    if not files:
        raise SystemExit(f"no results-*.parquet in {dir_}/out")
    ids, ttft, late, sent = [], [], [], []
    for f in files:
        t = pq.read_table(f, columns=["request_id", "ttft_us", "lateness_us", "actual_send_us"]).to_pydict()
        ids += t["request_id"]; ttft += t["ttft_us"]; late += t["lateness_us"]; sent += t["actual_send_us"]
    seen = {}
    for rid in ids:
        seen[rid] = seen.get(rid, 0) + 1
    errors, up, down, engine_wire, waited = [], [], [], [], []
    for rid, m, s in zip(ids, ttft, sent):
        if m is None or seen[rid] != 1 or rid not in tr:
            continue
        arrival, true_ttft, first, eng, hnd = tr[rid]
        errors.append(m - true_ttft)
        # Where the error lies, on the shared wall clock (client and sim on one machine):
        # send -> the sim's arrival stamp, and the sim's first-token hand-off -> the client's
        # (kernel-stamped) read of it; plus, inside the sim, engine emit -> hand-off and
        # arrival -> handler start (the wait in the sim's socket), neither part of the error.
        up.append(arrival - s)
        down.append(s + m - first)
        engine_wire.append(first - eng)
        waited.append(hnd - arrival)
    lateness = [x for x in late if x is not None]
    extra = {
        "send_to_arrival_p50_us": pct(up, 50), "send_to_arrival_p99_us": pct(up, 99),
        "sent_to_read_p50_us": pct(down, 50), "sent_to_read_p99_us": pct(down, 99),
        "engine_to_sent_p50_us": pct(engine_wire, 50), "engine_to_sent_p99_us": pct(engine_wire, 99),
        "arrival_to_handler_p50_us": pct(waited, 50), "arrival_to_handler_p99_us": pct(waited, 99),
    }
    return summary(errors, lateness, len(ids), len(errors), extra)


def guidellm(dir_):
    tr = truth(dir_)
    with open(os.path.join(dir_, "out.json")) as f:
        doc = json.load(f)
    out = []
    for b in doc.get("benchmarks", []):
        r = b.get("requests", {})
        reqs = r.get("successful", []) if isinstance(r, dict) else []
        line = guidellm_benchmark(tr, reqs)
        strategy = (b.get("config") or {}).get("strategy") or {}
        line["streams"] = strategy.get("streams")
        line["rate"] = strategy.get("rate")
        out.append(line)
    return out


def guidellm_benchmark(tr, reqs):
    """One GuideLLM benchmark (one concurrency level) against the truth rows."""
    errors, lateness, unmatched = [], [], []
    for r in reqs:
        t = (r.get("info") or {}).get("timings") or {}
        start, first, target = t.get("request_start"), t.get("first_token_iteration"), t.get("targeted_start")
        if start is None or first is None:
            continue
        if target is not None:
            lateness.append(int((start - target) * 1e6))
        ttft_us = int((first - start) * 1e6)
        # The sim names its completion `cmpl-<truth request_id>` when no x-request-id is sent.
        rid = (r.get("response_id") or "").removeprefix("cmpl-")
        if rid in tr:
            errors.append(ttft_us - tr[rid][1])
        else:
            unmatched.append((int(start * 1e6), ttft_us))
    dist = []
    if unmatched:
        # Fallback: nearest unmatched truth arrival in time order.
        arrivals = sorted(tr.values())
        keys = [a for a, _ in arrivals]
        used = [False] * len(arrivals)
        for start_us, m in sorted(unmatched):
            i = bisect.bisect_left(keys, start_us)
            best = None
            for j in range(max(0, i - 50), min(len(keys), i + 50)):
                if not used[j] and (best is None or abs(keys[j] - start_us) < abs(keys[best] - start_us)):
                    best = j
            if best is None:
                continue
            used[best] = True
            dist.append(abs(keys[best] - start_us))
            errors.append(m - arrivals[best][1])
    extra = {"matched_by_time": len(dist)}
    if dist:
        extra.update({"match_dist_p50_us": pct(dist, 50), "match_dist_p99_us": pct(dist, 99)})
    return summary(errors, lateness, len(reqs), len(errors), extra)


if __name__ == "__main__":
    tool, d = sys.argv[1], sys.argv[2]
    if tool == "retrace":
        print(json.dumps(retrace(d)))
    else:
        # One line per benchmark of the sweep (each with its "streams").
        for line in guidellm(d):
            print(json.dumps(line))
