"""Renders the results of benches/e2e.sh: a markdown table and ratios into
docs/performance.md (between the e2e markers) and an SVG plot of throughput and p99 against
connections. Standard library only.

usage: e2e_report.py RESULTS_DIR PERFORMANCE_MD PLOT_SVG
"""

import datetime
import glob
import json
import os
import platform
import re
import subprocess
import sys

BEGIN, END = "<!-- e2e:begin -->", "<!-- e2e:end -->"
SERIES = [
    ("hsmca-issuing-ca", "hsmca issuing-ca", "#1f77b4"),
    ("hsmca-workload", "hsmca workload", "#2ca02c"),
    ("vault-workload", "hsmca Vault sign/workload", "#9467bd"),
    ("cfssl-sign", "cfssl serve", "#d62728"),
]


def load(directory):
    runs = {}
    for path in glob.glob(os.path.join(directory, "*.json")):
        runs[os.path.basename(path)[:-5]] = json.load(open(path))
    return runs


def machine():
    cpu = "unknown CPU"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    cores = os.cpu_count()
    mem = int(open("/proc/meminfo").readline().split()[1]) // 1024 // 1024
    return f"{cpu}, {cores} cores, {mem} GiB, {platform.system()} {platform.release()}"


def svg(runs, path):
    width, height, margin = 900, 380, 60
    panel_w = (width - 3 * margin) / 2
    xs = [1, 16, 64, 256]

    def x_at(i, left):
        return left + i * panel_w / (len(xs) - 1)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    for panel, (key, title, unit) in enumerate([("throughput", "Throughput", "certificates/s"), ("p99_ms", "p99 latency", "ms")]):
        left = margin + panel * (panel_w + margin)
        top, bottom = 40, height - 60
        values = [runs[f"{s}-{n}"][key] for s, _, _ in SERIES for n in xs if f"{s}-{n}" in runs]
        top_value = max(values + [1]) * 1.1
        parts.append(f'<text x="{left + panel_w / 2}" y="20" text-anchor="middle" font-size="14">{title} ({unit}) vs connections</text>')
        parts.append(f'<line x1="{left}" y1="{bottom}" x2="{left + panel_w}" y2="{bottom}" stroke="black"/>')
        parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>')
        for i, n in enumerate(xs):
            parts.append(f'<text x="{x_at(i, left)}" y="{bottom + 16}" text-anchor="middle">{n}</text>')
        for k in range(5):
            v = top_value * k / 4
            y = bottom - (bottom - top) * k / 4
            parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{v:.0f}</text>')
            parts.append(f'<line x1="{left}" y1="{y}" x2="{left + panel_w}" y2="{y}" stroke="#ddd"/>')
        for series, label, colour in SERIES:
            points = [(x_at(i, left), bottom - (bottom - top) * runs[f"{series}-{n}"][key] / top_value)
                      for i, n in enumerate(xs) if f"{series}-{n}" in runs]
            if points:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in points)}"/>')
    for i, (_, label, colour) in enumerate(SERIES):
        x = margin + i * 200
        parts.append(f'<rect x="{x}" y="{height - 28}" width="14" height="4" fill="{colour}"/>')
        parts.append(f'<text x="{x + 20}" y="{height - 22}">{label}</text>')
    parts.append("</svg>")
    open(path, "w").write("\n".join(parts) + "\n")


def main(args):
    results, markdown, plot = args
    runs = load(results)
    rows = ["| target | scenario | connections | throughput /s | p50 ms | p99 ms | p99.9 ms | errors | 503 shed | server CPU % | server peak RSS MiB |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for series, label, _ in SERIES:
        for n in [1, 16, 64, 256]:
            r = runs.get(f"{series}-{n}")
            if r:
                statuses = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items() if k not in ("200", "503"))
                errors = f'{r["errors"] - r.get("shed_503", 0)}' + (f" ({statuses})" if statuses else "")
                shed = f'{r["shed_503"]} (p99 {r["refused_p99_ms"]:.0f} ms)' if r.get("shed_503") else "0"
                rows.append(f'| {label} | {r["scenario"]} | {n} | {r["throughput"]:.0f} | {r["p50_ms"]:.2f} | {r["p99_ms"]:.2f} | {r["p999_ms"]:.2f} | {errors} | {shed} | {r["server_cpu_percent"]:.0f} | {r["server_peak_rss_mib"]:.1f} |')
    raw = {name: runs[name]["throughput"] for name in ("raw-p256-1", "raw-p256-2", "raw-rsa2048-2") if name in runs}
    ours = runs.get("hsmca-issuing-ca-64", {}).get("throughput", 0)
    theirs = runs.get("cfssl-sign-64", {}).get("throughput", 1)
    ceiling = raw.get("raw-p256-2", 1)
    p99 = runs.get("hsmca-issuing-ca-64", {}).get("p99_ms", 0)
    shed = runs.get("hsmca-issuing-ca-256", {})
    rss = max((r.get("server_peak_rss_mib", 0) for k, r in runs.items() if k.startswith(("hsmca", "vault"))), default=0)
    ready = runs.get("startup", {}).get("start_to_ready_ms", 0)
    restart = runs.get("restart", {})
    counters = {}
    metrics_path = os.path.join(results, "metrics.txt")
    if os.path.exists(metrics_path):
        for line in open(metrics_path):
            name, _, value = line.partition(" ")
            if name in ("hsmca_record_groups_total", "hsmca_record_entries_total"):
                counters[name] = float(value)
    per_group = counters.get("hsmca_record_entries_total", 0) / max(counters.get("hsmca_record_groups_total", 0), 1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    seconds = runs.get("hsmca-issuing-ca-1", {}).get("seconds", 0)
    text = f"""{BEGIN}
Measured {datetime.date.today().isoformat()} on {machine()}, commit `{commit}`, with
`bash benches/e2e.sh` (about {seconds:.0f} s per run; the load generator shares the 2 cores with the
server). P-256 CSRs made before each run; keep-alive connections; hsmca with mTLS (TLS 1.3),
policy, HSM signing through the session pool, and the SQLite ledger and hash-chained audit log
synced before every answer; cfssl 1.2 `serve` with its P-256 key in memory, plain HTTP,
writing nothing.

Raw SoftHSM2 `C_Sign` in the same run: P-256 {raw.get('raw-p256-1', 0):.0f}/s on 1 thread,
{raw.get('raw-p256-2', 0):.0f}/s on 2; RSA-2048 (SHA256-RSA-PKCS) {raw.get('raw-rsa2048-2', 0):.0f}/s on 2.

{chr(10).join(rows)}

| target (from the issue) | measured | met |
|---|---|---|
| hsmca issuing-ca at 64 connections ≥ 1.2 × cfssl | {ours:.0f}/s vs {theirs:.0f}/s = {ours / theirs:.2f} × | {'yes' if ours >= 1.2 * theirs else 'no'} |
| hsmca ≥ 30 % of the raw P-256 ceiling (2 threads) | {ours:.0f} / {ceiling:.0f} = {100 * ours / ceiling:.0f} % | {'yes' if ours >= 0.3 * ceiling else 'no'} |
| p99 ≤ 20 ms at 64 connections | {p99:.2f} ms | {'yes' if p99 <= 20 else 'no'} |
| zero errors up to 64 connections | {sum(runs[k]['errors'] for k in runs if re.match(r'(hsmca|vault)-.*-(1|16|64)$', k))} | {'yes' if all(runs[k]['errors'] == 0 for k in runs if re.match(r'(hsmca|vault)-.*-(1|16|64)$', k)) else 'no'} |
| 256 connections: excess shed quickly, not queued | {shed.get('shed_503', 0)} shed with 503 (their p99 {shed.get('refused_p99_ms', 0):.0f} ms); certificates p99 {shed.get('p99_ms', 0):.0f} ms | {'yes' if shed.get('shed_503', 0) > 0 and max(shed.get('p99_ms', 1e9), shed.get('refused_p99_ms', 1e9)) <= 100 else 'no'} |
| peak RSS ≤ 64 MiB | {rss:.1f} MiB | {'yes' if rss <= 64 else 'no'} |
| start to `/readyz` OK ≤ 300 ms | {ready} ms (restart after the runs, {restart.get('audit_records', 0)} audit records: {restart.get('start_to_ready_ms', 0)} ms) | {'yes' if max(ready, restart.get('start_to_ready_ms', 0)) <= 300 else 'no'} |

Group commit over the whole hsmca run: {per_group:.1f} ledger rows and audit records per pair of
disk syncs ({counters.get('hsmca_record_entries_total', 0):.0f} entries in {counters.get('hsmca_record_groups_total', 0):.0f} groups).

![throughput and p99 against connections](performance-e2e.svg)
{END}"""
    document = open(markdown).read()
    if BEGIN in document:
        document = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: text, document, flags=re.S)
    else:
        document += "\n## End to end: hsmca against cfssl and the HSM ceiling\n\n" + text + "\n"
    open(markdown, "w").write(document)
    svg(runs, plot)
    print(text)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
