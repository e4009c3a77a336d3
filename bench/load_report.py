"""The report of bench/load.py: the figures, next to the targets."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from _common import describe_tree, median, pct, verdict
from load_crowd import PING_RATE, WATCH_BATCH

# Targets, printed next to the figures.
TARGET_ENABLE_P99_MS = 50.0
TARGET_STATUS_P99_MS = 100.0
TARGET_RSS_MIB = 250.0


def fanout(sent: dict[str, int], extra: dict[str, int], arrivals: dict[str, list[int]], watchers: int) -> dict:
    """Latency (ms) from each request to each watcher's event line; the last watcher per request."""
    all_ms: list[float] = []
    last_ms: list[float] = []
    missing = 0
    for key, t0 in sent.items():
        times = list(arrivals.get(key, []))
        if key in extra:
            times.append(extra[key])
        missing += watchers - len(times)
        lat = [(t - t0) / 1e6 for t in times]
        all_ms += lat
        if lat:
            last_ms.append(max(lat))
    all_ms.sort()
    return {
        "n": len(all_ms),
        "requests": len(sent),
        "p50": pct(all_ms, 0.5),
        "p99": pct(all_ms, 0.99),
        "max": all_ms[-1] if all_ms else float("nan"),
        "last_median": median(last_ms),
        "missing": missing,
    }


def report(args: argparse.Namespace, source: Path, res: dict, total: float) -> None:
    import msgspec
    import trio

    w = print
    mib = lambda kb: kb / 1024  # noqa: E731
    w(
        f"maintd load benchmark  (python {sys.version.split()[0]}, trio {trio.__version__}, msgspec {msgspec.__version__}, "
        f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f})"
    )
    w(f"tree: {describe_tree(source)}")
    w("")
    ss, cs = res["subs_setup"], res["crowd_setup"]
    n_agents = len(res["agents"]["agents"]) if isinstance(res["agents"], dict) and "agents" in res["agents"] else res["agents"]
    w(f"0. the load on one daemon (--http off; RLIMIT_NOFILE soft {res['daemon_nofile']} in the daemon):")
    w(
        f"  [agents] count = 0 accepted (the daemon shows {n_agents} agents); pipeline bulk/{res['trigger']['counter']} "
        f"with {args.jobs:,} jobs, all scheduled {res['scheduled_s'] * 1000:.0f} ms after the trigger reply; "
        f"daemon up in {res['start_s']:.1f} s"
    )
    w(
        f"  {res['connections']:,} control connections open at once: {args.watchers} watch (1 observer + {args.watchers - 1} "
        f"in the crowd), {args.subsystems} registered subsystems x {args.items} building_job items, "
        f"{res['pingers']} ping clients (~{PING_RATE:.0f}/s in all), 1 status sampler, 1 admin"
    )
    w(
        f"  setup: {args.subsystems} subsystems registered in {ss['register_s'] * 1000:.0f} ms, shown with all items after "
        f"{ss['reported_s'] * 1000:.0f} ms; {args.watchers - 1} watch snapshots of {cs['snapshot_size']:,} bytes each "
        f"in {cs['watch_s']:.1f} s (batches of {WATCH_BATCH}; snapshot p50 {cs['snapshot_p50_ms']:.0f} ms, max "
        f"{cs['snapshot_max_ms']:.0f} ms)"
    )
    w("")

    cyc = res["cycles"]
    keys = [
        ("enable reply", "enable_reply_ms"),
        ("every subsystem got pause_intake", "all_pause_received_ms"),
        ("every subsystem answered intake_paused", "all_acked_ms"),
        ("all paused/drained (watch stream)  [target]", "all_paused_ms"),
        ("... and confirmed by a status reply", "status_confirmed_ms"),
        ("disable -> reply", "disable_reply_ms"),
        ("disable -> all resumed", "all_resumed_ms"),
    ]
    w(f"1. enable -> every subsystem IntakePaused, {len(cyc)} enable/disable cycles, ms from the enable request:")
    w(f"  {'':46}{'p50':>9}{'p99':>9}{'max':>9}")
    for label, key in keys:
        v = sorted(c[key] for c in cyc)
        w(f"  {label:46}{pct(v, 0.5):>9.1f}{pct(v, 0.99):>9.1f}{v[-1]:>9.1f}")
    ext = [c["ext_shown_ms"] for c in cyc if c["ext_shown_ms"]]
    if ext:
        w(
            f"  shown paused on the watch stream (median over cycles): first external subsystem "
            f"{median([e[0] for e in ext]):.1f} ms, half of them {median([e[1] for e in ext]):.1f} ms, "
            f"the last {median([e[2] for e in ext]):.1f} ms"
        )
    names = sorted({n for c in cyc for n in c["builtin_shown_ms"]})
    if names:
        shown = ", ".join(
            f"{n} {median([c['builtin_shown_ms'][n] for c in cyc if n in c['builtin_shown_ms']]):.1f}" for n in names
        )
        w(f"  built-in subsystems shown paused/drained (median ms): {shown}")
    lasts: dict[str, int] = {}
    for c in cyc:
        key = c["last_shown"] if not str(c["last_shown"]).startswith("ext-") else "an external subsystem"
        lasts[key] = lasts.get(key, 0) + 1
    w("  the last one shown: " + ", ".join(f"{k} in {v} cycle(s)" for k, v in sorted(lasts.items(), key=lambda kv: -kv[1])))
    w(
        f"  events per cycle (enable + disable): {median([c['events'] for c in cyc]):.0f}; "
        f"watchers caught up after each cycle in {median([s['waited_ms'] for s in res['syncs'][: len(cyc)]]):.0f} ms (median)"
    )
    w("")
    cr = res["crowd"]
    w(
        f"2. status, one request at a time every {args.status_interval * 1000:.0f} ms from the sampler, "
        f"reply {cr['status_sizes'][0]:,}-{cr['status_sizes'][1]:,} bytes, ms:"
    )
    w(f"  {'':46}{'n':>6}{'p50':>9}{'p99':>9}{'max':>9}")
    status_all: list[float] = []
    for phase, label in (("steady", "steady (no changes: the cached reply)"), ("cycles", "during the cycles and probes")):
        v = sorted(cr["status_ms"].get(phase, []))
        status_all += v
        if v:
            w(f"  {label:46}{len(v):>6}{pct(v, 0.5):>9.1f}{pct(v, 0.99):>9.1f}{v[-1]:>9.1f}")
    status_all.sort()
    w(
        f"  status reply errors {cr['status_errors']}; pings {cr['pings']:,}: p50 {cr['ping_p50_ms']:.2f} ms, "
        f"p99 {cr['ping_p99_ms']:.2f} ms, errors {cr['ping_errors']}"
    )
    w("")
    arrivals = cr["arrivals"]
    en = fanout(
        {"enable:" + c["drain_id"]: c["t_enable"] for c in cyc},
        {"enable:" + c["drain_id"]: c["observer_enable_at"] for c in cyc},
        arrivals,
        args.watchers,
    )
    di = fanout(
        {f"disable:{c['updated_on']}": c["t_disable"] for c in cyc},
        {f"disable:{c['updated_on']}": c["observer_disable_at"] for c in cyc},
        arrivals,
        args.watchers,
    )
    pr = fanout(
        {f"probe:{i}": p["t_sent"] for i, p in enumerate(res["probes"])},
        {f"probe:{i}": p["observer_at"] for i, p in enumerate(res["probes"])},
        arrivals,
        args.watchers,
    )
    probe_bytes = res["probes"][0]["line_bytes"] if res["probes"] else 0
    w(f"3. event fan-out to {args.watchers} watchers, request sent -> event line at each watcher, ms:")
    w(f"  {'':46}{'lines':>7}{'p50':>9}{'p99':>9}{'max':>9}{'last*':>9}")
    for label, f in (
        ("enable -> state_changed", en),
        ("disable -> state_changed", di),
        (f"in_flight ({probe_bytes:,} B) -> in_flight_changed", pr),
    ):
        w(f"  {label:46}{f['n']:>7}{f['p50']:>9.1f}{f['p99']:>9.1f}{f['max']:>9.1f}{f['last_median']:>9.1f}")
    w("  * last: the time until the last watcher had it, median over the requests")
    lost = res["subs"]["lost_count"] + cr["lost_count"]
    missing = en["missing"] + di["missing"] + pr["missing"]
    w(
        f"  missing event lines {missing}; seq gaps {cr['gaps'] + res['subs']['gaps']} (watchers with gaps "
        f"{cr['watchers_with_gaps']}); unexpected lines {cr['unexpected_lines']}; connections lost {lost}"
    )
    w("")
    rss = res["rss"]
    w(f"4. daemon (pid {res['pid']}) memory and threads:")
    for label, m in rss.items():
        w(f"  {label:20} VmRSS {mib(m['VmRSS']):7.1f} MiB   VmHWM {mib(m['VmHWM']):7.1f} MiB   threads {m['Threads']}")
    w(
        f"  daemon CPU during steady + cycles + probes: {res['daemon_cpu_s']:.1f} s; load generators' CPU: subsystems "
        f"{res['subs']['usage']['cpu_s']:.1f} s, crowd {cr['usage']['cpu_s']:.1f} s"
    )
    n = max(1, len(res["cycles"]))
    w(
        f"  during the {len(res['cycles'])} enable/disable cycles: daemon CPU {res['cycles_cpu_s']:.2f} s "
        f"({res['cycles_cpu_s'] / n * 1000:.0f} ms a cycle), context switches of its threads {res['cycles_switches']:,} "
        f"({res['cycles_switches'] / n:,.0f} a cycle: each thread woken by another is one)"
    )
    log = res["log"]
    warnings = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line or "<4>" in line or "<3>" in line]
    w(f"  daemon log: {len(warnings)} warning/error line(s); exit code after SIGTERM {res['exit_code']}")
    for line in warnings[:5]:
        w(f"    {line[:200]}")
    w("")
    w("targets:")
    p99 = pct(sorted(c["all_paused_ms"] for c in cyc), 0.99)
    ok = p99 < TARGET_ENABLE_P99_MS
    w(f"  {f'enable -> all IntakePaused p99 under {TARGET_ENABLE_P99_MS:g} ms':46}p99 = {p99:.1f} ms   {verdict(ok)}")
    sp99 = pct(status_all, 0.99)
    ok = sp99 < TARGET_STATUS_P99_MS and not cr["status_errors"]
    shown = f"p99 = {sp99:.1f} ms ({len(status_all)} requests, {cr['status_sizes'][1]:,} bytes)"
    w(f"  {f'status p99 under {TARGET_STATUS_P99_MS:g} ms':46}{shown}   {verdict(ok)}")
    peak = max(mib(res["max_rss_kb"]), mib(rss["end"]["VmHWM"]))
    shown = f"VmRSS max {mib(res['max_rss_kb']):.1f} MiB, VmHWM {mib(rss['end']['VmHWM']):.1f} MiB"
    w(f"  {f'daemon RSS under {TARGET_RSS_MIB:g} MiB':46}{shown}   {verdict(peak < TARGET_RSS_MIB)}")
    healthy = lost == 0 and missing == 0 and cr["gaps"] == 0 and cr["ping_errors"] == 0 and cr["status_errors"] == 0
    shown = f"lost connections {lost}, missing event lines {missing}, seq gaps {cr['gaps']}"
    w(f"  {'no errors, disconnects or lost events':46}{shown}   {verdict(healthy)}")
    w(f"total time {total:.1f} s")
