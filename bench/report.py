"""docs/performance.md from one run's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .scenarios import hol_b, hol_daemons
from .stats import FVD, XVMD

NOTES = Path(__file__).with_name("notes.md")


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _met(m: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "not measured"}[m]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


def _goals(goals: list[dict[str, Any]]) -> list[str]:
    rows = [
        [g["scenario"], g["what"], g["value"], g["target"], _met(g["met"]), g.get("note", "")]
        for g in goals
    ]
    return _table(["scenario", "measure", "value", "goal", "met", "note"], rows)


def _error(res: dict[str, Any]) -> list[str]:
    return ["**Scenario failed**; its log:", "", "```", res["error"].strip(), "```", ""]


def latency(res: dict[str, Any]) -> list[str]:
    rows = []
    for op, r in res["ops"].items():
        x, f = r[XVMD], r[FVD]
        rows.append([
            f"`-o {op}`", _f(x["median"], 2), _f(x["p99"], 2), _f(f["median"], 2),
            _f(f["p99"], 2), _f(r["ratio_median"], 2), _f(r["ratio_p99"], 2), str(x["n"]),
        ])  # fmt: skip
    out = _table(
        ["fence_xvm", "xvmd median ms", "xvmd p99 ms", "fence_virtd median ms",
         "fence_virtd p99 ms", "ratio median", "ratio p99", "runs each"], rows
    )  # fmt: skip
    if res["failures"]:
        out += [f"Failed runs: {res['failures']}", ""]
    return out


def load(res: dict[str, Any]) -> list[str]:
    out = []
    for conc, lv in res["levels"].items():
        rows = []
        for name in (XVMD, FVD):
            d = lv[name]
            lat = d["latency_ms"]
            rows.append([
                name, _f(d["throughput"], 0), _f(lat.get("median"), 1), _f(lat.get("p99"), 1),
                f"{d['lost']} / {d['wrong']}", str(d["retransmits"]),
                _f(d["daemon_cpu_per_req_us"], 0), f"{d['daemon_cpu_util'] * 100:.0f} %",
                f"{d['daemon_sys_share'] * 100:.0f} %", _f(d["daemon_ctxsw_per_req"], 1),
                _f(d["client_cpu_per_req_us"], 0), f"{d['client_cpu_util'] * 100:.0f} %",
            ])  # fmt: skip
        out += [
            f"**{conc} in flight** ({lv[XVMD]['requests']} requests per daemon; "
            f"throughput ratio xvmd/fence_virtd **{_f(lv['ratio_throughput'], 2)}**)",
            "",
        ]
        if lv[XVMD].get("xvmd_drops"):
            out += [f"xvmd's drop counters: {lv[XVMD]['xvmd_drops']}", ""]
        out += _table(
            ["daemon", "req/s", "p50 ms", "p99 ms", "lost / wrong", "retransmits",
             "daemon CPU µs/req", "daemon CPU", "of it kernel", "daemon ctx switches/req",
             "client CPU µs/req", "client CPU"], rows
        )  # fmt: skip
    return out


def flood(res: dict[str, Any]) -> list[str]:
    rows = []
    for name in (XVMD, FVD):
        d = res["daemons"][name]
        rows.append([
            name, _f(d["achieved_rate"], 0), str(d["sent"]), str(d["kernel_drops"]),
            _f(d["cpu_per_sent_us"], 2), _f(d["cpu_per_received_us"], 2),
            f"{d['daemon_cpu_util'] * 100:.0f} %",
            _f(d["valid_idle_ms"].get("median"), 1), _f(d["valid_idle_ms"].get("p99"), 1),
            _f(d["valid_flood_ms"].get("median"), 1), _f(d["valid_flood_ms"].get("p99"), 1),
            f"{d['valid_lost']} of {d['valid_sent']}", str(d["valid_retransmitted"]),
        ])  # fmt: skip
    out = _table(
        ["daemon", "sent/s", "sent", "kernel drops", "CPU µs/sent", "CPU µs/received",
         "daemon CPU", "valid idle p50 ms", "idle p99", "valid flood p50 ms", "flood p99",
         "valid lost", "valid retransmitted"], rows
    )  # fmt: skip
    counters = res["daemons"][XVMD].get("xvmd_drop_counters")
    if counters:
        out += [f"xvmd's own drop counters during the flood: {counters}", ""]
    return out


def scale(res: dict[str, Any]) -> list[str]:
    ls = res["list"]
    out = [f"`fence_xvm -o list` with {res['domains']} test-driver domains:", ""]
    out += _table(
        ["daemon", "median ms", "p99 ms", "runs"],
        [[n, _f(ls[n]["median"], 1), _f(ls[n]["p99"], 1), str(ls[n]["n"])] for n in (XVMD, FVD)],
    )
    out += [f"Ratio of medians xvmd/fence_virtd: **{_f(ls['ratio_median'], 2)}**.", ""]
    out += ["Start to ready (spawn until the first `status` is answered; a poller retransmits "
            "every 5 ms):", ""]  # fmt: skip
    rows = []
    for label, by in res["ready_ms"].items():
        doms = "43" if label == "43" else str(res["domains"])
        rows.append([doms, _f(by[XVMD]["median"], 0), _f(by[XVMD]["max"], 0),
                     _f(by[FVD]["median"], 0), _f(by[FVD]["max"], 0),
                     _f(by["ratio_median"], 2), str(by[XVMD]["n"])])  # fmt: skip
    out += _table(
        ["domains", "xvmd median ms", "xvmd max", "fence_virtd median ms", "fence_virtd max",
         "ratio", "starts each"], rows
    )  # fmt: skip
    c = res["ccs"]
    out += [f"cluster.conf with {c['nodes']} nodes and 4 fence devices ({c['bytes']} bytes), "
            "in-process, xvmd only (fence_virtd has no cluster.conf):", ""]  # fmt: skip
    out += _table(
        ["call", "first call ms", "median ms", "p99 ms", "runs"],
        [[f"`{k}`", _f(c[k]["cold_ms"], 1), _f(c[k]["median"], 1), _f(c[k]["p99"], 1),
          str(c[k]["n"])] for k in ("parse", "load_bytes", "load")],
    )  # fmt: skip
    rl = res["reload"]
    rows = [[str(i + 1), _f(r["logged_s"], 3), _f(r["served_s"], 3)]
            for i, r in enumerate(rl["runs"])]  # fmt: skip
    out += ["Live reload of the running xvmd (`--local -f cluster.conf`): a new file with a "
            "higher `config_version` and one more node is renamed into place; *logged* is when "
            "the log says `reloaded`, *served* when a poller (every 10 ms) first gets the new "
            "node's status instead of `Permission denied`:", ""]  # fmt: skip
    out += _table(["reload", "logged s", "served s"], rows)
    return out


def footprint(res: dict[str, Any]) -> list[str]:
    rows = []
    for name in (XVMD, FVD):
        d = res["daemons"][name]
        rows.append([
            name, _f(d["idle_kib"] / 1024, 1), _f(d["after_warmup_kib"] / 1024, 1),
            _f(d["after_kib"] / 1024, 1), str(d["requests"]),
            _f(d["growth_from_idle_kib"] / 1024, 2), _f(d["growth_after_warmup_kib"] / 1024, 2),
        ])  # fmt: skip
    out = _table(
        ["daemon", "idle MiB", "after warm-up MiB", "after MiB", "requests served",
         "growth from idle MiB", "growth after warm-up MiB"], rows
    )  # fmt: skip
    samples = ", ".join(f"{n}: {kib / 1024:.1f}" for n, kib in res["daemons"][XVMD]["samples"])
    return [*out, f"xvmd RSS (MiB) after n requests: {samples}.", ""]


def hol(res: dict[str, Any]) -> list[str]:
    if res["status"] == "not run":
        return ["Not run: " + res["reason"] + ".", ""]
    if res["status"] == "failed":
        return ["**Failed**:", "", "```", res["error"].strip(), "```", ""]
    result = res["result"]
    rows = []
    for name, d in hol_daemons(result).items():
        b = hol_b(d)
        rows.append([
            name, str(d.get("trials")), f"{b.get('answered')} of {b.get('sent')}",
            _f(b.get("p50_ms")), _f(b.get("p99_ms")), _f(b.get("max_ms")),
            str(d.get("a_reboot_rc")), str(d.get("a_reboot_s")), str(d.get("a_running_again")),
        ])  # fmt: skip
    if not rows:
        brief = {k: v for k, v in result.items() if k != "trials"}
        return ["Result of `bench.hol.run`:", "", "```json", json.dumps(brief, indent=1), "```", ""]
    return [
        "While the stock `fence_xvm` reboots real QEMU/TCG domain A (private libvirtd), a "
        "client asks for domain B's status every "
        f"{_f(result.get('b_interval_ms') or result.get('interval_ms'), 0)} ms "
        "(`bench/hol.py`, raw trials in the JSON):",
        "",
        *_table(
            ["daemon", "trials", "B answered", "B p50 ms", "B p99 ms", "B max ms",
             "A reboot rc", "A reboot s", "A running again"], rows
        ),
        "B p99 ratio xvmd/fence_virtd: "
        f"{_f(result.get('ratio_b_p99_xvmd_over_fence_virtd'), 4)}.",
        "",
        *_fencing(result.get("time_to_fence")),
    ]  # fmt: skip


def _fencing(res: Any) -> list[str]:
    if not isinstance(res, dict):
        return []
    rows = []
    for op in ("off", "reboot"):
        for name in (XVMD, FVD):
            d = res.get(op, {}).get(name, {})
            rows.append([
                f"`-o {op}`", name, str(d.get("trials")), str(d.get("rc")),
                _f(_ms(d.get("answer_median_s")), 0), _f(_ms(d.get("qemu_gone_median_s")), 0),
                _f(_ms(d.get("qemu_back_median_s")), 0), str(d.get("all_honest")),
                str(d.get("all_done")),
            ])  # fmt: skip
    ratios = ", ".join(f"`-o {op}` {_f(res.get(op, {}).get('ratio_answer_median'), 2)}"
                       for op in ("off", "reboot"))  # fmt: skip
    return [
        "### Time to fence",
        "",
        "In the same lab, the stock `fence_xvm` powers domain A off (it is started again "
        "between trials) or reboots it, through each daemon in turn (`bench/tofence.py`). "
        "Times from spawning `fence_xvm`: *answer* when it exits with the result, *QEMU gone* "
        "when A's QEMU process ended (a pidfd on it), *QEMU back* when a new one exists; "
        "*honest*: success never came before the QEMU process was gone; *done*: A shut off, "
        "or running under a new domain id.",
        "",
        *_table(
            [
                "op",
                "daemon",
                "trials",
                "rc",
                "answer median ms",
                "QEMU gone median ms",
                "QEMU back median ms",
                "honest",
                "done",
            ],
            rows,
        ),
        f"Answer ratio of medians xvmd/fence_virtd: {ratios}.",
        "",
    ]


def _ms(seconds: Any) -> float | None:
    return seconds * 1000 if isinstance(seconds, int | float) else None


def multihost(res: dict[str, Any]) -> list[str]:
    if res["status"] == "failed":
        return ["**Failed**:", "", "```", res["error"].strip(), "```", ""]
    r = res["result"]
    rows = []
    for label, part in (("xvmd, 3 hosts (group)", r["group"]),
                        ("xvmd, one host (--local)", r["single"]["xvmd"]),
                        ("fence_virtd, one host", r["single"]["fence_virtd"])):  # fmt: skip
        lat, ld = part["latency"], part["load"]
        cpu = ", ".join(f"{n} {v:.0f}" for n, v in ld.get("cpu_us_per_req", {}).items())
        rows.append([
            label, _f(lat.get("median")), _f(lat.get("p99")), f"{ld['throughput']:.0f}",
            f"{ld['lost']} / {ld['wrong']}", cpu,
        ])  # fmt: skip
    moves = [
        [m["vm"], f"{m['from']} -> {m['to']}", _f(_ms(m["off_to_on_s"]), 0),
         _f(_ms(m.get("first_running_s")), 1), _f(_ms(m["first_correct_s"]), 1),
         str(m["stale_after_start"]), str(m["lost"]),
         str(m["before_move_ok"])]
        for m in r["migration"]
    ]  # fmt: skip
    return [
        "Three hosts and a guest on one bridge in namespaces (`bench/multihost.py`, the lab of "
        "`tests/support/chaos.py`): real corosync (knet), a private libvirtd (test driver) and "
        "xvmd in cluster mode on each host; the guest's VMs run on hosts 1, 2, 3 and 1, and "
        "only a VM's owner connects back. The baseline is the same lab with the group stopped "
        "and one daemon on host 1 (its VMs only). *Latency*: the stock `fence_xvm -o status` "
        "from the guest; *load*: the load generator, 16 in flight; *CPU*: µs per answered "
        "request, summed over the processes named (3 xvmd and 3 corosync in the group).",
        "",
        *_table(
            [
                "daemons",
                "status median ms",
                "p99 ms",
                "req/s (16 in flight)",
                "lost / wrong",
                "CPU µs/req",
            ],
            rows,
        ),
        "A migration as the hosts see it: the VM is destroyed on one host and started on "
        "another while the guest asks for its status every 10 ms. From the start returning on "
        "the new host: the first `running` (from any host: a sweep finds the VM on its new "
        "host before the table has it), and the first from the new host itself; *stale*: "
        "answers other than `running` to requests sent after the start.",
        "",
        *_table(
            [
                "VM",
                "hosts",
                "destroy -> started ms",
                "first running ms",
                "first from the new host ms",
                "stale",
                "lost",
                "answered by the old host before",
            ],
            moves,
        ),
    ]


SECTIONS = {
    "latency": ("Latency: the stock `fence_xvm`, end to end", latency),
    "load": ("Load: status requests from a wire-protocol load generator", load),
    "flood": ("Flood: invalid datagrams with valid requests in between", flood),
    "scale": ("Scale: many domains, start-up, a large cluster.conf and its reload", scale),
    "footprint": ("Footprint: resident memory", footprint),
    "hol": ("Head-of-line blocking with real QEMU domains (`bench/hol.py`)", hol),
    "multihost": ("Several hosts: the cost of one answer per request", multihost),
}


def render(meta: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    m = meta["machine"]
    lines = [
        "# Performance: xvmd against fence_virtd",
        "",
        "Generated by `python -m bench`; do not edit by hand (the analysis comes from "
        "`bench/notes.md`). Raw numbers of the run: `bench/results/latest.json` (not "
        "committed).",
        "",
        f"Run: {meta['date']}, `{meta['command']}`, "
        f"{'quick' if meta['quick'] else 'full'} plan, {meta['seconds']:.0f} s. "
        f"Tree: {meta['git']}.",
        "",
        "## Goals",
        "",
    ]
    goals = [g for r in results.values() for g in r.get("goals", [])]
    lines += _goals(goals) if goals else ["No goals were measured in this run.", ""]
    for name, res in results.items():
        title, fn = SECTIONS[name]
        lines += [f"## {title}", ""]
        lines += _error(res) if "error" in res else fn(res)
    if NOTES.exists():
        lines += [NOTES.read_text().strip(), ""]
    lines += [
        "## How the numbers were obtained",
        "",
        f"- Machine: {m['nproc']} vCPUs ({m['cpu']}), {m['memory']}, kernel {m['kernel']}, "
        f"Python {m['python']}, fence-virtd {m['fence_virtd']}, libvirt {m['libvirt']}.",
        f"- Idle CPU in the 2 s before the run: {meta['cpu_idle_before']:.0%}; load average "
        f"before / after: {meta['loadavg_before']} / {meta['loadavg_after']} (other work on "
        "the machine shows here; the bench itself keeps about one core busy).",
        f"- Date: {meta['date']}. Command: `{meta['command']}` (as root).",
        "- Each daemon runs in its own network namespace holding only `lo`; every client, "
        "load generator and flood sender runs inside that namespace, and nothing else is "
        "addressed. Both daemons use the same 4096-byte key (sha256 signatures and "
        "challenge-response) and the same libvirt test-driver file "
        "(`test:///…/fixtures/domains.xml`, 43 domains, or a generated file).",
        "- xvmd: `python -m xvmd --local --no-ccs -k KEY -I lo -p 1229 --control SCRATCH/x.sock "
        "-U test://FILE` (plus `--audit SCRATCH/…` where the tree has an audit trail, so it "
        "stays on but out of /var/lib). fence_virtd: `stdbuf -o0 -e0 fence_virtd -F -d 0 -f "
        "CONF` with the multicast listener on `lo`, `module_path = "
        '"/usr/lib/x86_64-linux-gnu/fence-virt"` and the libvirt backend on the same URI.',
        "- Before the run the bench writes xvmd's bytecode (`compileall`), as installing "
        "the package does; otherwise each start would compile every module first.",
        "- Scenarios alternate between the daemons (A/B, then B/A) so drift affects both. "
        "Medians and p99 use linear interpolation between ranks. CPU of a daemon is utime + "
        "stime from `/proc/PID/stat` (all threads); RSS is `VmRSS` from `/proc/PID/status`; "
        "the generator's own CPU is `getrusage(RUSAGE_SELF)`.",
        "- **latency**: `fence_xvm -a 225.0.0.12 -p 1229 -k KEY -t 5 -o status -H vm-01` and "
        "`-o list`, spawned by a helper inside the namespace and timed from spawn to exit "
        "(process start, key read, multicast, connect-back, challenge-response, answer); "
        "warm-up runs are discarded.",
        "- **load**: `bench/loadgen.py` speaks the wire protocol with `xvmd.protocol` (an epoll "
        "loop, no asyncio): every request has its own TCP callback listener and a fresh seqno, "
        "goes to the multicast group, retransmits every 2 s like the stock client and counts as "
        "lost after 10 s (callback ports cycle through 10000-29999 with SO_REUSEADDR; each "
        "namespace's ephemeral range is set to 30000-65000, so tens of thousands of callbacks "
        "in TIME_WAIT do not slow the generator's binds down); requests go round-robin over "
        "the 43 domains and each result byte is "
        "checked (running or paused: 0, shut off: 2). Throughput = answered requests / wall "
        "time; latency is from the first send to the result byte. *Client CPU* near 100 % "
        "would mean the generator, not the daemon, was the limit.",
        "- **flood**: `bench/flood.py` sends pre-built datagrams from one process on a "
        "connected UDP socket to 127.0.0.1:1229, paced to the target rate: half random bytes "
        "of random size (1 to 1400), half well-formed 176-byte requests with a random signature. "
        "Meanwhile a prober sends a valid status request every 100 ms (unicast, retransmit "
        "after 2 s, lost after 8 s). The idle baseline is the same prober without the flood. "
        "Kernel drops (receive queue full) come from `/proc/net/udp` in the namespace; CPU per "
        "datagram is the daemon's CPU during the flood, less the valid requests' share "
        "(measured idle), divided by the datagrams sent (or received).",
        "- **scale**: a test-driver file with 2,000 domains (every fifth shut off); start to "
        "ready is from spawning the daemon until a poller (retransmitting every 5 ms) gets "
        "the first status answer. The 1,000-node cluster.conf (4 fence devices, node N → VM "
        "vm-0000N) is generated; `ccs.parse`, `ccs.load_bytes` and `ccs.load` are timed "
        "in-process without the name resolver (the bench runs in the host namespace and must "
        "not send DNS queries); the running daemon's reload does resolve, inside its "
        "namespace, where lookups fail at once.",
        "- **footprint**: RSS right after start (idle), after a warm-up, and after each "
        "quarter of the requests (64 in flight).",
        "- **hol** and **time to fence**: one private libvirtd (own network, mount and PID "
        "namespaces) with two QEMU/TCG domains (32 MiB, no disk), both daemons on its socket; "
        "`bench/hol.py` and `bench/tofence.py`. A QEMU process's end is seen through a pidfd, a "
        "new one by its `-name guest=` command line.",
        "- **multihost**: `bench/multihost.py` builds the lab of `tests/support/chaos.py` (three "
        "corosync nodes over knet on a bridge in namespaces, token 1000 ms, a private libvirtd "
        "with the test driver and xvmd in cluster mode on each, a guest namespace); latency with "
        "the stock `fence_xvm`, load with the load generator sending from the guest's address; "
        "the baseline stops the group's daemons and runs one daemon on host 1.",
        "",
    ]
    return "\n".join(lines)
