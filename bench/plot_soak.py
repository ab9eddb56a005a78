#!/usr/bin/env python3
"""Plots a proxy soak (bench/proxy_soak.sh's samples.csv): RSS and open fds against
requests received, to a PNG.

    bench/plot_soak.py SOAK_DIR/samples.csv docs/img/proxy_soak_rss.png [--title TEXT]

Needs matplotlib (pip install matplotlib).
"""
import argparse
import csv
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("samples", help="samples.csv from bench/proxy_soak.sh")
    ap.add_argument("png", help="output PNG")
    ap.add_argument("--title", default="retrace proxy over a soak (recording on)")
    args = ap.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_soak.py: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return 2
    reqs, rss_mib, fds = [], [], []
    with open(args.samples, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                if not row["rss_kib"] or not row["requests_received"]:
                    continue
                reqs.append(int(row["requests_received"]))
                rss_mib.append(int(row["rss_kib"]) / 1024)
                fds.append(int(row["fds"]))
            except (KeyError, ValueError) as e:
                print(f"{args.samples}:{line}: bad sample ({e})", file=sys.stderr)
                return 2
    if not reqs:
        print(f"{args.samples}: no samples", file=sys.stderr)
        return 2
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    ax.plot([r / 1e3 for r in reqs], rss_mib, color="tab:blue", label="RSS (MiB)")
    ax.set_xlabel("requests received (thousands)")
    ax.set_ylabel("RSS (MiB)", color="tab:blue")
    ax.set_ylim(0, max(rss_mib) * 1.25)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot([r / 1e3 for r in reqs], fds, color="tab:orange", label="open fds", alpha=0.8)
    ax2.set_ylabel("open fds", color="tab:orange")
    ax2.set_ylim(0, max(fds) * 1.25)
    ax.set_title(args.title)
    fig.tight_layout()
    fig.savefig(args.png)
    print(f"wrote {args.png} ({len(reqs)} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
