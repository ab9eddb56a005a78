#!/usr/bin/env python3
"""Renders bench/run.sh's results.jsonl as docs/benchmarks.md (stdlib only).

Every cell is the median over the runs with the min–max in brackets; ratios are medians of
per-run ratios where both sides ran in the same round.
"""
import argparse
import json
import os
import statistics


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, unit="", digits=None):
    if x is None:
        return "–"
    if digits is None:
        digits = 0 if abs(x) >= 100 else (1 if abs(x) >= 10 else 2)
    return f"{x:,.{digits}f}{unit}"


def cell(xs, unit="", digits=None):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    if len(xs) == 1:
        return fmt(xs[0], unit, digits)
    return f"{fmt(med(xs), unit, digits)} ({fmt(min(xs), '', digits)}–{fmt(max(xs), '', digits)})"


def ratio(a, b):
    if a is None or b is None:
        return "–"
    if b <= 0 or abs(b) < 1e-9:
        # A peer that adds nothing measurable (≤ 0 within noise) has no meaningful ratio.
        return f"n/a (peer {b:+.3g}, retrace {a:+.3g})"
    r = a / b
    # Two significant figures below 0.1, so a ratio of 0.0006 does not print as 0.00.
    return f"{r:.2f}×" if abs(r) >= 0.1 or r == 0 else f"{r:.2g}×"


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def ms(us):
    return None if us is None else us / 1000.0


def proxy_section(rows, out):
    p = [r for r in rows if r["cmp"] == "proxy"]
    if not p:
        out.append("_Not run (see notes)._\n")
        return
    targets = [t for t in ("direct", "nginx", "retrace") if any(r["target"] == t for r in p)]

    def by(mode, target):
        return {r["run"]: r for r in p if r["mode"] == mode and r["target"] == target}

    for mode, title in (("max", "At maximum rate"), ("fixed", "At a fixed offered rate"),
                        ("paced", "Paced streams (events spaced in time, as from a model server)")):
        if not any(r["mode"] == mode for r in p):
            continue
        direct = by(mode, "direct")
        out.append(f"### {title}\n")
        out.append("| path | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | proxy CPU µs/req | proxy cores busy | proxy RSS MB |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        stats = {}
        for t in targets:
            runs = by(mode, t)
            rps = [r["wrk"]["rps"] for r in runs.values()]
            p50 = [ms(r["wrk"]["lat_p50_us"]) for r in runs.values()]
            p99 = [ms(r["wrk"]["lat_p99_us"]) for r in runs.values()]
            add50 = [ms(r["wrk"]["lat_p50_us"] - direct[k]["wrk"]["lat_p50_us"]) for k, r in runs.items() if k in direct]
            add99 = [ms(r["wrk"]["lat_p99_us"] - direct[k]["wrk"]["lat_p99_us"]) for k, r in runs.items() if k in direct]
            cpu_req = [r["cpu_s"] * 1e6 / r["wrk"]["requests"] for r in runs.values() if r["wrk"]["requests"]]
            cores = [r["cpu_s"] / r["wrk"]["seconds"] for r in runs.values() if r["wrk"]["seconds"]]
            rss = [r["rss_kb"] / 1024 for r in runs.values()]
            errs = sum(r["wrk"]["errors"] for r in runs.values())
            stats[t] = dict(rps=med(rps), add50=med(add50), add99=med(add99), cpu=med(cpu_req), rss=med(rss))
            label = t + (" (upstream alone)" if t == "direct" else "") + (f" — {errs} errors" if errs else "")
            proxy_cols = t != "direct"
            out.append(
                f"| {label} | {cell(rps)} | {cell(p50)} | {cell(p99)} | "
                f"{cell(add50) if proxy_cols else '0'} | {cell(add99) if proxy_cols else '0'} | "
                f"{cell(cpu_req) if proxy_cols else '–'} | {cell(cores, digits=2) if proxy_cols else '–'} | "
                f"{cell(rss, digits=1) if proxy_cols else '–'} |")
        if "nginx" in stats and "retrace" in stats:
            r, n = stats["retrace"], stats["nginx"]
            out.append("")
            out.append(f"**retrace ÷ nginx** ({mode}): throughput {ratio(r['rps'], n['rps'])}, "
                       f"added p50 {ratio(r['add50'], n['add50'])}, added p99 {ratio(r['add99'], n['add99'])}, "
                       f"CPU per request {ratio(r['cpu'], n['cpu'])}, RSS {ratio(r['rss'], n['rss'])} "
                       "(below 1× is better for retrace except throughput).")
        out.append("")
    t_rows = [r for r in p if r["mode"] == "ttfb"]
    if t_rows:
        out.append("### SSE time to first event (sequential requests on one keep-alive connection)\n")
        out.append("| path | first event p50 ms | first event p99 ms | added p50 ms | added p99 ms | whole stream p50 ms |")
        out.append("|---|---|---|---|---|---|")
        direct = {r["run"]: r["ttfb"] for r in t_rows if r["target"] == "direct"}
        added = {}
        for t in targets:
            runs = {r["run"]: r["ttfb"] for r in t_rows if r["target"] == t}
            a50 = [ms(v["ttfe_p50_us"] - direct[k]["ttfe_p50_us"]) for k, v in runs.items() if k in direct]
            a99 = [ms(v["ttfe_p99_us"] - direct[k]["ttfe_p99_us"]) for k, v in runs.items() if k in direct]
            added[t] = (med(a50), med(a99))
            out.append(f"| {t} | {cell([ms(v['ttfe_p50_us']) for v in runs.values()], digits=3)} | "
                       f"{cell([ms(v['ttfe_p99_us']) for v in runs.values()], digits=3)} | "
                       f"{cell(a50, digits=3) if t != 'direct' else '0'} | {cell(a99, digits=3) if t != 'direct' else '0'} | "
                       f"{cell([ms(v['e2e_p50_us']) for v in runs.values()], digits=3)} |")
        if "nginx" in added and "retrace" in added:
            out.append("")
            out.append(f"**retrace ÷ nginx**: added time to first event p50 {ratio(added['retrace'][0], added['nginx'][0])}, "
                       f"p99 {ratio(added['retrace'][1], added['nginx'][1])}.")
        out.append("")
    rec = [r for r in rows if r["cmp"] == "proxy_recording"]
    if rec:
        out.append(f"retrace's recording during these runs: {rec[0]['files']} Parquet file(s), {rec[0]['bytes']:,} bytes.\n")


def fidelity_section(rows, out):
    f = [r for r in rows if r["cmp"] == "fidelity"]
    if not f:
        out.append("_Not run (see notes)._\n")
        return
    out.append("| streams | client | requests | joined with truth | TTFT error p50 ms | TTFT error p99 ms | lateness p50 ms | lateness p99 ms |")
    out.append("|---|---|---|---|---|---|---|---|")
    levels = sorted({r["streams"] for r in f})
    ratios = []
    for lv in levels:
        per_tool = {}
        for tool in ("retrace", "guidellm"):
            runs = [r["r"] for r in f if r["streams"] == lv and r["tool"] == tool]
            if not runs:
                continue
            e99 = [ms(x["ttft_err_p99_us"]) for x in runs]
            per_tool[tool] = med(e99)
            out.append(f"| {lv} | {tool} | {cell([x['requests'] for x in runs], digits=0)} | {cell([x['joined'] for x in runs], digits=0)} | "
                       f"{cell([ms(x['ttft_err_p50_us']) for x in runs], digits=2)} | {cell(e99, digits=2)} | "
                       f"{cell([ms(x['lateness_p50_us']) for x in runs], digits=2)} | "
                       f"{cell([ms(x['lateness_p99_us']) for x in runs], digits=2)} |")
        if "retrace" in per_tool and "guidellm" in per_tool:
            ratios.append(f"{lv} streams: {ratio(per_tool['retrace'], per_tool['guidellm'])}")
    out.append("")
    if ratios:
        out.append("**retrace ÷ GuideLLM, TTFT error p99**: " + "; ".join(ratios) + " (below 1× is better for retrace).\n")
    g = [r["r"] for r in f if r["tool"] == "guidellm" and r["r"].get("match_dist_p99_us") is not None]
    if g:
        out.append(f"GuideLLM requests were matched to truth rows by send time; match distance p99 "
                   f"{cell([ms(x['match_dist_p99_us']) for x in g], ' ms', 2)}.\n")
    top = max(levels)
    rt = [r["r"] for r in f if r["streams"] == top and r["tool"] == "retrace"]
    if top < 1000:
        out.append("Goal (retrace TTFT error ≤ 5 ms at 1,000 streams): not judged, this run stopped at "
                   f"{top} streams.\n")
    elif rt:
        e = med([ms(x["ttft_err_p99_us"]) for x in rt])
        verdict = "met" if e is not None and e <= 5 else "NOT met"
        out.append(f"Goal (retrace TTFT error ≤ 5 ms at 1,000 streams): at {top} streams p99 = {fmt(e, ' ms', 2)}: **{verdict}**.\n")


def rate_section(rows, out):
    f = [r for r in rows if r["cmp"] == "rate"]
    if not f:
        return
    out.append("### Open-loop rate sweep: send lateness\n")
    out.append("Poisson arrivals (retrace `--rate R/s`; GuideLLM `--profile kind=constant,rate=R`) for the same "
               "duration; one run per rate. The claim is the highest rate whose lateness p99 stays ≤ 10 ms.\n")
    out.append("| rate/s | client | requests | lateness p50 ms | lateness p99 ms | TTFT error p99 ms |")
    out.append("|---|---|---|---|---|---|")
    best = {}
    for r in sorted(f, key=lambda r: (r["rate"], r["tool"])):
        x = r["r"]
        out.append(f"| {r['rate']:g} | {r['tool']} | {x['requests']} | {fmt(ms(x['lateness_p50_us']), digits=2)} | "
                   f"{fmt(ms(x['lateness_p99_us']), digits=2)} | {fmt(ms(x['ttft_err_p99_us']), digits=2)} |")
        if x["lateness_p99_us"] is not None and x["lateness_p99_us"] <= 10_000:
            best[r["tool"]] = max(best.get(r["tool"], 0), r["rate"])
    out.append("")
    tools = sorted({r["tool"] for r in f})
    out.append("Highest tested rate with lateness p99 ≤ 10 ms: " + "; ".join(
        f"{t}: {best[t]:g}/s" if t in best else f"{t}: none of the tested rates" for t in tools) + ".\n")


def simple_section(rows, out):
    rec = [r["r"] for r in rows if r["cmp"] == "recorder"]
    out.append("## 3. Recorder\n")
    if rec:
        out.append("| rows | rows/s encoded (wall) | rows/s per CPU-second | bytes/row on disk |")
        out.append("|---|---|---|---|")
        out.append(f"| {cell([x['rows'] for x in rec], digits=0)} | {cell([x['rows_per_s'] for x in rec])} | "
                   f"{cell([x['rows_per_cpu_s'] for x in rec])} | {cell([x['bytes_per_row'] for x in rec], digits=2)} |")
        out.append("")
        out.append("Goals: ≥ 1M rows/s on one core, ≤ 24 bytes/row. No peer: no other LLM proxy records "
                   "per-request shapes to Parquet to compare with.\n")
    else:
        out.append("_Not run (see notes)._\n")
    rss = [r for r in rows if r["cmp"] == "proxy_rss"]
    if rss:
        out.append("Proxy RSS while requests pass through it with recording on (one run, after each batch):\n")
        out.append("| requests so far | RSS MB | batch seconds |")
        out.append("|---|---|---|")
        for r in rss:
            out.append(f"| {r['requests']:,} | {r['rss_kb'] / 1024:.1f} | {r.get('seconds', '–')} |")
        out.append("")
    an = [r for r in rows if r["cmp"] == "analyzer"]
    out.append("## 4. Analyzer\n")
    if an:
        out.append("| rows | seconds (wall) | rows/s (wall) | rows per CPU-second | peak RSS MB |")
        out.append("|---|---|---|---|---|")
        out.append(f"| {an[0]['rows']:,} | {cell([r['seconds'] for r in an])} | {cell([r['rows'] / r['seconds'] for r in an])} | "
                   f"{cell([r['rows'] / r['cpu_s'] for r in an if r['cpu_s']])} | {cell([r['peak_rss_kb'] / 1024 for r in an], digits=1)} |")
        out.append("")
        out.append("Goals: ≥ 10M rows/s, < 1 GiB.\n")
    else:
        out.append("_Not run (see notes)._\n")
    sim = [r["r"] for r in rows if r["cmp"] == "sim"]
    out.append("## 5. Sim\n")
    if sim:
        out.append("| streams × tokens | SSE events/s | peak concurrent streams |")
        out.append("|---|---|---|")
        out.append(f"| {sim[0]['streams']} × {sim[0]['tokens_per_stream']} | {cell([x['sse_events_per_s'] for x in sim])} | "
                   f"{cell([x['peak_concurrent_streams'] for x in sim], digits=0)} |")
        out.append("")
        out.append("Goal: ≥ 50k SSE events/s and 1,000 concurrent streams on one core (server and its "
                   "clients share core 0 here, so this understates the server alone).\n")
    else:
        out.append("_Not run (see notes)._\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--notes", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--load-end", default="")
    ap.add_argument("--elapsed", default="")
    ap.add_argument("--mode", default="")
    ap.add_argument("--build-s", default="0")
    ap.add_argument("--commands", default="", help="JSON {CMD_*: command} (else from the environment)")
    a = ap.parse_args()
    rows = load(a.results)
    m = json.loads(a.machine)
    notes = [n for n in open(a.notes).read().splitlines() if n.strip()]
    env = os.environ.get
    out = []
    flag = {"full": "", "quick": " --quick", "smoke": " --smoke"}.get(a.mode, "")
    out.append("# Benchmarks\n")
    out.append(f"Generated by `bench/run.sh{flag}` — do not edit by hand; rerun it. Absolute numbers vary "
               "between machines and with load; **the ratios to the peer, measured in the same run on the same "
               "machine, are the claim.** Cells are medians over the runs with min–max in brackets.\n")
    out.append("## Machine and conditions\n")
    out.append(f"- {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']} GiB, Linux {m['kernel']}; commit {m['git']}; {m['date']}")
    out.append(f"- load average (1/5/15 min) at start {m['load_start']}, at end {a.load_end}; mode `{a.mode}`; the benchmarks took {a.elapsed} s (after {a.build_s} s of installs check and build)")
    out.append("- all traffic on 127.0.0.1. Proxies (nginx, retrace) pinned to CPU 1 with one worker each "
               "(`worker_processes 1`; `retrace proxy --threads 1`); load tool and upstream pinned to CPU 0.\n")
    out.append("## 1. Proxy overhead: direct vs nginx vs `retrace proxy` (recording on)\n")
    out.append("Upstream: `bench_sse`, a static SSE responder (16 `data:` events + usage + `[DONE]`, chunked, "
               "one frame per event) on one thread. Load: wrk, one thread, POST `/v1/completions`. At the "
               "maximum and the fixed rate every event is ready at once and a response arrives in one read; "
               "in the paced runs the upstream sends each event a fixed gap after the one before (wrk's "
               "`BENCH_GAP_US`, see the exact commands), so the proxy forwards each on its own, as in front "
               "of a model server, and latency is the whole stream's. "
               "\"Added\" = path − direct, per run. CPU from `/proc/PID/stat` (nginx: master + worker), RSS from "
               "`/proc/PID/status` after the run.\n")
    proxy_section(rows, out)
    out.append("## 2. Load-client fidelity: `retrace replay` vs GuideLLM against `retrace sim --truth`\n")
    out.append("N closed-loop streams (retrace `--users N`, GuideLLM `--rate-type concurrent --rate N`), every "
               "request 128 prompt tokens → 32 output tokens, sim with its default (7–8B-on-one-GPU) cost model, "
               "`--max-num-seqs 1024`. TTFT error = the client's TTFT (from its actual send) − the sim's truth "
               "(the kernel's receive time of the request head at the sim → the first token's bytes handed to "
               "the sim's HTTP writer; docs/sim.md). Lateness = when the client's scheduler handed the request "
               "over − its own intended send.\n")
    fidelity_section(rows, out)
    rate_section(rows, out)
    simple_section(rows, out)
    out.append("## Exact commands\n")
    cmds = {}
    if a.commands and os.path.exists(a.commands):
        cmds = json.load(open(a.commands))
    out.append("```sh")
    for k in ("CMD_PROXY_UP", "CMD_PROXY_NG", "CMD_PROXY_RT", "CMD_PROXY_WRK", "CMD_PROXY_TTFB", "CMD_RSS",
              "CMD_FID_SIM", "CMD_FID_RT", "CMD_FID_GL", "CMD_RATE_RT", "CMD_RATE_GL", "CMD_REC", "CMD_AN", "CMD_SIM"):
        v = env(k) or cmds.get(k)
        if v:
            out.append(f"# {k.lower()[4:]}\n{v}")
    out.append("```\n")
    out.append("## Notes from this run\n")
    if notes:
        out += [f"- {n}" for n in notes]
    else:
        out.append("- none: every harness ran.")
    out.append("")
    findings = os.path.join(os.path.dirname(os.path.abspath(a.results)), "findings.md")
    if os.path.exists(findings):
        out.append(open(findings).read().rstrip() + "\n")
    extra = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.md")
    if os.path.exists(extra):
        out.append(open(extra).read().rstrip() + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
