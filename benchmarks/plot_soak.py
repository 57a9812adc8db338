"""Draws the soak's samples (benchmarks/src/bin/soak.rs): meterflow's RSS, and the records
produced but not yet read or not yet committed, over time, with the burst and the ClickHouse
stop shaded.

usage: plot_soak.py samples.csv out.png "title"

Installs matplotlib with pip when it is missing (the benchmark runs outside the test suite).
"""

import csv
import subprocess
import sys


def matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        base = [sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"]
        if subprocess.call(base) != 0:
            subprocess.check_call(base + ["--break-system-packages"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def main():
    path, out, title = sys.argv[1], sys.argv[2], sys.argv[3]
    rows = [r for r in csv.DictReader(open(path)) if float(r["rss_mib"]) > 0]
    t = [float(r["t"]) for r in rows]
    rss = [float(r["rss_mib"]) for r in rows]
    ch_rss = [float(r["clickhouse_rss_mib"]) for r in rows]
    unread = [(int(r["produced"]) - int(r["read"])) / 1e6 for r in rows]
    uncommitted = [(int(r["produced"]) - int(r["committed"])) / 1e6 for r in rows]
    rate = [0.0] + [
        (int(b["produced"]) - int(a["produced"])) / 1e3 / max(float(b["t"]) - float(a["t"]), 1e-3)
        for a, b in zip(rows, rows[1:])
    ]
    stopped = [r["clickhouse_stopped"] == "1" for r in rows]

    plt = matplotlib()
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    for ax in (ax1, ax2, ax3):
        for i, s in enumerate(stopped):
            if s and i + 1 < len(t):
                ax.axvspan(t[i], t[i + 1], color="tab:red", alpha=0.15, lw=0)
        ax.grid(alpha=0.3)
    ax1.plot(t, rate, color="tab:gray")
    ax1.set_ylabel("produced\n(k records/s)")
    ax1.set_title(title, fontsize=10)
    ax2.plot(t, rss, label="meterflow RSS")
    ax2.plot(t, ch_rss, label="ClickHouse RSS", alpha=0.6)
    ax2.set_ylabel("MiB")
    ax2.legend(loc="upper left")
    ax3.plot(t, unread, label="produced, not yet read by meterflow")
    ax3.plot(t, uncommitted, label="produced, not yet committed in ClickHouse")
    ax3.set_ylabel("lag (M records)")
    ax3.set_xlabel("seconds since start (red: ClickHouse stopped with SIGSTOP)")
    ax3.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main()
