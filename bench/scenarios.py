"""Scenarios comparing the two daemons: latency, load, flood, footprint (and the optional hol).

Each scenario starts a fresh pair (each daemon in its own lo-only namespace), runs A/B rounds,
stops both and returns plain data plus the goals it checked.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from typing import Any

from . import tofence
from .env import DOMAINS_XML, REPO, Daemon, Env, Xvmd, agent, say
from .stats import FVD, XVMD, Goal, Plan, alternate, ratio, summary

Result = dict[str, Any]


def who(d: Daemon) -> str:
    return XVMD if isinstance(d, Xvmd) else FVD


def start_pair(e: Env, domains: Any = DOMAINS_XML) -> tuple[Daemon, Daemon]:
    x, f = e.xvmd(domains), e.fence_virtd(domains)
    for d in (x, f):
        say(f"  start {who(d)} in {d.ns.name}: ready in {d.start() * 1000:.0f} ms")
    return x, f


def time_client(d: Daemon, args: Sequence[str], runs: int, warmup: int) -> Result:
    """Run the stock fence_xvm ``warmup + runs`` times from inside ``d``'s namespace."""
    cmd = ["timeit", "--runs", str(runs), "--warmup", str(warmup), "--", *d.fence_xvm(*args)]
    return agent(d.ns, cmd, timeout=300, what=f"fence_xvm {' '.join(args)} on {who(d)}")


# -- latency ----------------------------------------------------------------------------------

OPS = {"status": ("-o", "status", "-H", "vm-01"), "list": ("-o", "list")}


def latency(e: Env, plan: Plan) -> Result:
    """The stock fence_xvm, spawned from inside the namespace, spawn to exit."""
    x, f = start_pair(e)
    lists: dict[str, dict[str, list[float]]] = {op: {XVMD: [], FVD: []} for op in OPS}
    failures: Counter[str] = Counter()
    per_round = math.ceil(plan.latency_runs / plan.rounds)
    try:
        for r, d in alternate(plan.rounds, x, f):
            for op, args in OPS.items():
                res = time_client(d, args, per_round, plan.warmup)
                lines = 1 if op == "status" else 43
                for ms, rc, n in zip(res["latency_ms"], res["rc"], res["lines"], strict=True):
                    if rc != 0 or n != lines:
                        failures[f"{who(d)} {op}: rc {rc}, {n} lines"] += 1
                    lists[op][who(d)].append(ms)
                s = summary(lists[op][who(d)])
                say(f"  round {r + 1} {who(d)} {op}: median {s['median']} ms so far")
    finally:
        e.stop(x, f)
    out: Result = {"ops": {}, "failures": dict(failures), "goals": []}
    for op, by in lists.items():
        sx, sf = summary(by[XVMD]), summary(by[FVD])
        rm = ratio(sx.get("median"), sf.get("median"))
        out["ops"][op] = {
            XVMD: sx,
            FVD: sf,
            "ratio_median": rm,
            "ratio_p99": ratio(sx.get("p99"), sf.get("p99")),
            "raw_ms": by,
        }
        out["goals"].append(
            Goal(
                "latency",
                f"fence_xvm -o {' '.join(OPS[op][1:])}: median xvmd/fence_virtd",
                f"{rm}",
                "<= 1.0",
                rm is not None and rm <= 1.0 and not failures,
            ).asdict()
        )
    return out


# -- load -------------------------------------------------------------------------------------


def _load_once(d: Daemon, key: str, count: int, concurrency: int, timeout: float) -> Result:
    c0, t0, split0, drops0 = d.cpu(), time.monotonic(), d.cpu_split(), _xvmd_drops(d)
    res = agent(
        d.ns,
        ["load", "--port", str(d.port), "--key", key, "--domains", str(DOMAINS_XML),
         "--count", str(count), "--concurrency", str(concurrency),
         "--max-seconds", str(timeout - 30)],
        timeout=timeout,
        what=f"load on {who(d)}",
    )  # fmt: skip
    split1 = d.cpu_split()
    res["daemon_cpu_s"] = d.cpu() - c0
    res["daemon_user_s"] = split1[0] - split0[0]
    res["daemon_sys_s"] = split1[1] - split0[1]
    res["daemon_ctxsw"] = split1[2] - split0[2]
    res["agent_wall_s"] = time.monotonic() - t0
    drops1 = _xvmd_drops(d)
    if drops0 is not None and drops1 is not None:
        res["xvmd_drops"] = {
            k: v - drops0.get(k, 0) for k, v in drops1.items() if v > drops0.get(k, 0)
        }
    return res


def load(e: Env, plan: Plan) -> Result:
    x, f = start_pair(e)
    out: Result = {"levels": {}, "goals": []}
    per_round = plan.load_count // plan.rounds
    try:
        for conc in plan.concurrency:
            acc: dict[str, Result] = {}
            for r, d in alternate(plan.rounds, x, f):
                res = _load_once(d, str(e.key), per_round, conc, timeout=600)
                say(
                    f"  c={conc} round {r + 1} {who(d)}: {res['throughput']:.0f} req/s, "
                    f"lost {res['lost']}, wrong {res['wrong']}, daemon cpu "
                    f"{res['daemon_cpu_s']:.2f}s, client cpu {res['client_cpu_s']:.2f}s"
                )
                a = acc.setdefault(who(d), {"latency_ms": [], "errors": Counter()})
                for k in ("ok", "lost", "wrong", "retransmits", "wall_s", "client_cpu_s",
                          "daemon_cpu_s", "daemon_user_s", "daemon_sys_s", "daemon_ctxsw",
                          "done"):  # fmt: skip
                    a[k] = a.get(k, 0) + res[k]
                a["latency_ms"] += res["latency_ms"]
                a["errors"].update(res["errors"])
                a.setdefault("xvmd_drops", Counter()).update(res.get("xvmd_drops", {}))
                a.setdefault("wrong_detail", {}).update(res["wrong_detail"])
                a.setdefault("rounds", []).append(
                    {k: v for k, v in res.items() if k != "latency_ms"}
                )
            level: Result = {}
            for name, a in acc.items():
                wall, ok = a["wall_s"], a["ok"]
                level[name] = {
                    "requests": a["done"],
                    "ok": ok,
                    "lost": a["lost"],
                    "wrong": a["wrong"],
                    "errors": dict(a["errors"]),
                    "wrong_detail": a["wrong_detail"],
                    "retransmits": a["retransmits"],
                    "throughput": round(ok / wall, 1) if wall else 0.0,
                    "latency_ms": summary(a["latency_ms"]),
                    "daemon_cpu_s": round(a["daemon_cpu_s"], 3),
                    "daemon_cpu_per_req_us": round(a["daemon_cpu_s"] / max(ok, 1) * 1e6, 1),
                    "daemon_cpu_util": round(a["daemon_cpu_s"] / wall, 3) if wall else None,
                    "daemon_sys_share": round(a["daemon_sys_s"] / max(a["daemon_cpu_s"], 1e-9), 3),
                    "daemon_ctxsw_per_req": round(a["daemon_ctxsw"] / max(ok, 1), 1),
                    "client_cpu_s": round(a["client_cpu_s"], 3),
                    "client_cpu_per_req_us": round(a["client_cpu_s"] / max(ok, 1) * 1e6, 1),
                    "client_cpu_util": round(a["client_cpu_s"] / wall, 3) if wall else None,
                    "wall_s": round(wall, 3),
                    "xvmd_drops": dict(a["xvmd_drops"]),
                    "rounds": a["rounds"],
                    "raw_latency_ms": a["latency_ms"],
                }
            rt = ratio(level[XVMD]["throughput"], level[FVD]["throughput"])
            level["ratio_throughput"] = rt
            out["levels"][str(conc)] = level
            clean = all(level[n]["lost"] == 0 and level[n]["wrong"] == 0 for n in (XVMD, FVD))
            out["goals"].append(
                Goal(
                    "load",
                    f"{conc} in flight: throughput xvmd/fence_virtd",
                    f"{rt}",
                    ">= 1.0",
                    rt is not None and rt >= 1.0,
                ).asdict()
            )
            out["goals"].append(
                Goal(
                    "load",
                    f"{conc} in flight: lost or wrong answers (both daemons)",
                    f"xvmd {level[XVMD]['lost']}/{level[XVMD]['wrong']}, "
                    f"fence_virtd {level[FVD]['lost']}/{level[FVD]['wrong']}",
                    "0",
                    clean,
                ).asdict()
            )
    finally:
        e.stop(x, f)
    return out


# -- flood ------------------------------------------------------------------------------------


def _xvmd_drops(d: Daemon) -> dict[str, int] | None:
    if not isinstance(d, Xvmd):
        return None
    try:
        from xvmd.daemon.control import query

        counters = query(str(d.control), timeout=5)["counters"]["dropped"]
        return {str(k): int(v) for k, v in counters.items()}
    except Exception:  # an older or newer xvmd may not have it; the numbers stand without it
        return None


def _probe(d: Daemon, key: str, seconds: float, interval: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        d.ns.cmd(sys.executable, "-m", "bench.agent", "probe", "--port", str(d.port),
                 "--key", key, "--seconds", str(seconds), "--interval", str(interval)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip


def _finish(proc: subprocess.Popen[str], timeout: float, what: str) -> Result:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"{what} did not finish in {timeout}s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed: {err.strip()[-2000:]}")
    result: Result = json.loads(out.strip().splitlines()[-1])
    return result


def flood(e: Env, plan: Plan) -> Result:
    """Invalid datagrams at ``flood_rate``/s to 127.0.0.1:PORT, a valid request every 100 ms."""
    x, f = start_pair(e)
    key = str(e.key)
    secs = plan.flood_seconds
    out: Result = {"rate_target": plan.flood_rate, "seconds": secs, "daemons": {}, "goals": []}
    try:
        idle: dict[str, Result] = {}
        for _, d in alternate(1, x, f):
            c0 = d.cpu()
            res = _finish(_probe(d, key, secs, plan.probe_interval), secs + 30, "idle probe")
            res["daemon_cpu_s"] = d.cpu() - c0
            idle[who(d)] = res
            say(f"  idle {who(d)}: {res['ok']}/{res['sent']} valid answered")
        flooded: dict[str, Result] = {}
        for _, d in alternate(1, f, x):
            sender = subprocess.Popen(
                d.ns.cmd(sys.executable, "-m", "bench.agent", "flood", "--port", str(d.port),
                         "--rate", str(plan.flood_rate), "--seconds", str(secs)),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            )  # fmt: skip
            try:
                assert sender.stdout is not None
                if sender.stdout.readline().strip() != "armed":
                    raise RuntimeError(f"flood sender failed: {sender.communicate()[1]}")
                c0, drops0, xd0 = d.cpu(), d.ns.udp_drops(d.port), _xvmd_drops(d)
                probe = _probe(d, key, max(secs - 0.5, 1.0), plan.probe_interval)
                sent = _finish(sender, secs + 30, "flood sender")
                c1, drops1, xd1 = d.cpu(), d.ns.udp_drops(d.port), _xvmd_drops(d)
                valid = _finish(probe, secs + 30, "flood probe")
            finally:
                for p in (sender,):
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            res = {"sender": sent, "valid": valid, "daemon_cpu_s": c1 - c0,
                   "kernel_drops": drops1 - drops0}  # fmt: skip
            if xd0 is not None and xd1 is not None:
                res["xvmd_drop_counters"] = {k: v - xd0.get(k, 0) for k, v in xd1.items()}
            flooded[who(d)] = res
            say(
                f"  flood {who(d)}: {sent['rate']:.0f}/s sent, kernel drops "
                f"{res['kernel_drops']}, daemon cpu {res['daemon_cpu_s']:.2f}s, valid "
                f"{valid['ok']}/{valid['sent']}"
            )
        for name in (XVMD, FVD):
            out["daemons"][name] = _flood_numbers(name, idle[name], flooded[name], out["goals"])
    finally:
        e.stop(x, f)
    return out


def _flood_numbers(name: str, idle: Result, fl: Result, goals: list[Result]) -> Result:
    sent = fl["sender"]["sent"]
    received = max(sent - fl["kernel_drops"], 0)
    per_valid = idle["daemon_cpu_s"] / max(idle["ok"], 1)
    cpu_flood = max(fl["daemon_cpu_s"] - per_valid * fl["valid"]["ok"], 0.0)
    us_sent = cpu_flood / max(sent, 1) * 1e6
    us_recv = cpu_flood / max(received, 1) * 1e6
    idle_s, flood_s = summary(idle["latency_ms"]), summary(fl["valid"]["latency_ms"])
    lost = fl["valid"]["lost"] + fl["valid"]["wrong"]
    p99_ratio = ratio(flood_s.get("p99"), idle_s.get("p99"))
    res: Result = {
        "achieved_rate": round(fl["sender"]["rate"], 1),
        "sent": sent,
        "sender_cpu_s": round(fl["sender"]["sender_cpu_s"], 3),
        "kernel_drops": fl["kernel_drops"],
        "received": received,
        "daemon_cpu_s": round(fl["daemon_cpu_s"], 3),
        "daemon_cpu_util": round(fl["daemon_cpu_s"] / fl["sender"]["wall_s"], 3),
        "cpu_per_sent_us": round(us_sent, 2),
        "cpu_per_received_us": round(us_recv, 2),
        "valid_idle_ms": idle_s,
        "valid_flood_ms": flood_s,
        "valid_sent": fl["valid"]["sent"],
        "valid_lost": lost,
        "valid_retransmitted": fl["valid"]["retransmitted"],
        "p99_ratio": p99_ratio,
        "xvmd_drop_counters": fl.get("xvmd_drop_counters"),
        "raw": {"idle_ms": idle["latency_ms"], "flood_ms": fl["valid"]["latency_ms"]},
    }
    if name == XVMD:
        goals += [
            Goal("flood", "valid p99 under flood / idle p99", f"{p99_ratio}", "<= 2.0",
                 p99_ratio is not None and p99_ratio <= 2.0).asdict(),
            Goal("flood", "valid requests lost", str(lost), "0", lost == 0).asdict(),
            Goal("flood", "daemon CPU per datagram sent (µs)", f"{us_sent:.2f}", "< 10",
                 us_sent < 10, f"{us_recv:.2f} µs per datagram received").asdict(),
        ]  # fmt: skip
    return res


# -- footprint --------------------------------------------------------------------------------


def footprint(e: Env, plan: Plan) -> Result:
    x, f = start_pair(e)
    key = str(e.key)
    samples: dict[str, list[tuple[int, int]]] = {XVMD: [], FVD: []}
    served = {XVMD: 0, FVD: 0}
    out: Result = {"daemons": {}, "goals": []}
    try:
        time.sleep(1.0)
        idle = {who(d): d.rss_kib() for d in (x, f)}
        for d in (x, f):
            _load_once(d, key, plan.footprint_warmup, 16, timeout=300)
            served[who(d)] += plan.footprint_warmup
        warm = {who(d): d.rss_kib() for d in (x, f)}
        chunks = 4
        for _, d in alternate(chunks, x, f):
            res = _load_once(d, key, plan.footprint_requests // chunks, 64, timeout=900)
            served[who(d)] += res["ok"]
            samples[who(d)].append((served[who(d)], d.rss_kib()))
            say(f"  {who(d)}: {served[who(d)]} requests served, RSS {samples[who(d)][-1][1]} KiB")
        for name in (XVMD, FVD):
            after = samples[name][-1][1]
            out["daemons"][name] = {
                "idle_kib": idle[name],
                "after_warmup_kib": warm[name],
                "after_kib": after,
                "requests": served[name],
                "growth_from_idle_kib": after - idle[name],
                "growth_after_warmup_kib": after - warm[name],
                "samples": samples[name],
            }
    finally:
        e.stop(x, f)
    xd = out["daemons"][XVMD]
    out["goals"] = [
        Goal("footprint", "xvmd RSS after the run (MiB)", f"{xd['after_kib'] / 1024:.1f}", "< 40",
             xd["after_kib"] < 40 * 1024).asdict(),
        Goal("footprint", "xvmd RSS growth idle -> after (MiB)",
             f"{xd['growth_from_idle_kib'] / 1024:.2f}", "< 1", xd["growth_from_idle_kib"] < 1024,
             f"after the first {plan.footprint_warmup} requests: "
             f"{xd['growth_after_warmup_kib'] / 1024:.2f} MiB").asdict(),
    ]  # fmt: skip
    return out


# -- head-of-line (bench/hol.py, written separately) ------------------------------------------


def hol(e: Env, plan: Plan) -> Result:
    if importlib.util.find_spec("bench.hol") is None:
        return {"status": "not run", "reason": "bench/hol.py is not present", "goals": []}
    try:
        from . import hol as mod

        result: Any = mod.run(plan.quick)
    except Exception:
        return {"status": "failed", "error": traceback.format_exc(limit=5), "goals": []}
    return {"status": "ran", "result": result, "goals": _hol_goals(result)}


def hol_daemons(result: Any) -> dict[str, Any]:
    """Per-daemon results of bench/hol.py, whichever key its version uses."""
    if not isinstance(result, dict):
        return {}
    found = result.get("daemons") or result.get("per_daemon") or {}
    return found if isinstance(found, dict) else {}


def hol_b(daemon: Any) -> dict[str, Any]:
    found = daemon.get("b") or daemon.get("b_pooled") or {} if isinstance(daemon, dict) else {}
    return found if isinstance(found, dict) else {}


def _hol_goals(result: Any) -> list[Result]:
    """bench/hol.py's own verdicts, in this report's form."""
    verdicts = result.get("goals") if isinstance(result, dict) else None
    if not isinstance(verdicts, dict):
        return []
    fencing = result.get("time_to_fence")
    extra = tofence.goals(fencing) if isinstance(fencing, dict) else []
    b = {n: hol_b(d) for n, d in hol_daemons(result).items()}
    note = ", ".join(f"{n} B p99 {v.get('p99_ms')} ms" for n, v in b.items())
    return [
        Goal("hol", f"bench/hol.py: {k.replace('_', ' ')}", str(bool(v)), "true", bool(v),
             note).asdict()
        for k, v in verdicts.items()
        if k != "met"
    ] + extra  # fmt: skip


# -- several hosts (bench/multihost.py) -----------------------------------------------------------


def multihost(e: Env, plan: Plan) -> Result:
    from . import multihost as mod

    try:
        result = mod.run(plan.quick)
    except Exception:
        return {"status": "failed", "error": traceback.format_exc(limit=5), "goals": []}
    return {"status": "ran", "result": result, "goals": mod.goals(result)}
