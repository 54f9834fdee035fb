"""Scale: a 2,000-domain list, start-to-ready, a 1,000-node cluster.conf and its live reload."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ccs
from ccs.parse import parse

from .env import DOMAINS_XML, REPO, Daemon, Env, say, write_domains, write_key
from .scenarios import Result, time_client, who
from .stats import FVD, XVMD, Goal, Plan, alternate, ratio, summary

DEVICES = 4  # fence devices (hosts) in the generated cluster.conf; the bench key is host1's


def cluster_conf(nodes: int, version: int, extra: int = 0) -> str:
    """``nodes`` nodes spread over DEVICES hosts, node N -> VM vm-0000N; then ``extra`` nodes
    (1001, …) on host1. Requests come from 127.0.0.1, which is node0001's altname."""
    out = [f'<?xml version="1.0"?>\n<cluster name="bench" config_version="{version}">',
           "  <clusternodes>"]  # fmt: skip
    for n in range(1, nodes + extra + 1):
        host = 1 if n > nodes else (n - 1) % DEVICES + 1
        alt = '<altname name="127.0.0.1"/>' if n == 1 else ""
        out.append(
            f'    <clusternode name="node{n:04d}" nodeid="{n}">{alt}<fence><method name="1">'
            f'<device name="xvm-host{host}" port="vm-{n:05d}"/></method></fence></clusternode>'
        )
    out.append("  </clusternodes>\n  <fencedevices>")
    for h in range(1, DEVICES + 1):
        out.append(
            f'    <fencedevice name="xvm-host{h}" agent="fence_xvm" key_file="host{h}.key"/>'
        )
    out.append("  </fencedevices>\n</cluster>\n")
    return "\n".join(out)


def reload_target(k: int, nodes: int) -> int:
    """The k-th added node's number; never a multiple of 5, whose VMs are shut off."""
    n = nodes + k + 1
    return n + 1 if n % 5 == 0 else n


def _timed(fn: Any, runs: int) -> tuple[float, list[float]]:
    t = time.perf_counter()
    fn()
    cold = (time.perf_counter() - t) * 1000
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return cold, times


def _ccs_inprocess(conf: Path, runs: int) -> Result:
    data = conf.read_bytes()

    def load_bytes() -> None:
        res = ccs.load_bytes(data, str(conf))
        if res.snapshot is None:
            raise RuntimeError(f"generated cluster.conf rejected: {res.issues[:3]}")

    def load() -> None:
        if ccs.load(str(conf)).snapshot is None:
            raise RuntimeError("generated cluster.conf rejected")

    out: Result = {"bytes": len(data)}
    for name, fn in (
        ("parse", lambda: parse(data, str(conf))),
        ("load_bytes", load_bytes),
        ("load", load),
    ):
        cold, times = _timed(fn, runs)
        out[name] = {"cold_ms": round(cold, 3), **summary(times), "raw_ms": times}
    return out


def _reload(e: Env, conf: Path, domains: Path, plan: Plan) -> Result:
    """Rename a bumped cluster.conf into place; until the log says so, and until it serves."""
    d = e.xvmd(domains, config=conf)
    results: list[Result] = []
    try:
        say(f"  xvmd with {plan.ccs_nodes}-node cluster.conf: ready in {d.start('vm-00001'):.2f}s")
        for k in range(plan.reload_runs):
            target = reload_target(k, plan.ccs_nodes)
            poll = subprocess.Popen(
                d.ns.cmd(sys.executable, "-m", "bench.agent", "poll", "--port", str(d.port),
                         "--key", str(e.key), "--target", f"node{target:04d}", "--expect", "0",
                         "--interval", "0.01", "--timeout", "20"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            )  # fmt: skip
            try:
                assert poll.stdout is not None
                if poll.stdout.readline().strip() != "armed":
                    raise RuntimeError(f"poll failed: {poll.communicate()[1]}")
                time.sleep(0.3)  # the poller is refused (3) until the reload
                before = d.log().count("reloaded")
                tmp = conf.with_suffix(".new")
                tmp.write_text(cluster_conf(plan.ccs_nodes, 2 + k, extra=target - plan.ccs_nodes))
                t0 = time.monotonic()
                os.rename(tmp, conf)
                logged = None
                while time.monotonic() - t0 < 20:
                    if d.log().count("reloaded") > before:
                        logged = time.monotonic() - t0
                        break
                    time.sleep(0.005)
                out, err = poll.communicate(timeout=30)
            finally:
                if poll.poll() is None:
                    poll.kill()
                    poll.wait()
            if poll.returncode != 0:
                raise RuntimeError(f"reload {k}: node{target:04d} never served: {err[-1500:]}")
            served = float(json.loads(out.strip().splitlines()[-1])["at"]) - t0
            results.append({"logged_s": logged, "served_s": round(served, 4)})
            say(f"  reload {k + 1}: logged after {logged}s, served after {served:.3f}s")
    finally:
        e.stop(d)
    return {"runs": results, "served_s": summary([r["served_s"] for r in results])}


def _ready_goals(ready: dict[str, Any], domains: int) -> list[dict[str, Any]]:
    small = ready["43"][XVMD]["median"]
    rb = ready["big"]["ratio_median"]
    return [
        Goal("scale", "start to first answer, 43 domains: xvmd median (ms)", f"{small:.0f}",
             "< 150", small < 150).asdict(),
        Goal("scale", f"start to first answer, {domains} domains: median ratio", f"{rb}",
             "<= 1.0", rb is not None and rb <= 1.0).asdict(),
    ]  # fmt: skip


def scale(e: Env, plan: Plan) -> Result:
    big = write_domains(e.scratch / f"domains-{plan.scale_domains}.xml", plan.scale_domains)
    out: Result = {"domains": plan.scale_domains, "goals": []}
    ready: dict[str, dict[str, list[float]]] = {k: {XVMD: [], FVD: []} for k in ("43", "big")}
    for label, domains in (("43", DOMAINS_XML), ("big", big)):
        for r in range(plan.ready_runs):
            pair: tuple[Daemon, Daemon] = (e.xvmd(domains), e.fence_virtd(domains))
            try:
                for d in pair if r % 2 == 0 else pair[::-1]:
                    ready[label][who(d)].append(d.start() * 1000)
            finally:
                if label == "43" or r < plan.ready_runs - 1:
                    e.stop(*pair)
        say(f"  ready ({label} domains): " + ", ".join(
            f"{n} {summary(v)['median']:.0f} ms" for n, v in ready[label].items()))  # fmt: skip
    x, f = pair
    lists: dict[str, list[float]] = {XVMD: [], FVD: []}
    try:
        per_round = max(plan.list_runs // plan.rounds, 1)
        for _, d in alternate(plan.rounds, x, f):
            res = time_client(d, ("-o", "list"), per_round, 1)
            for ms, rc, n in zip(res["latency_ms"], res["rc"], res["lines"], strict=True):
                if rc != 0 or n != plan.scale_domains:
                    raise RuntimeError(f"{who(d)} list of {plan.scale_domains}: rc {rc}, {n} lines")
                lists[who(d)].append(ms)
    finally:
        e.stop(x, f)
    sx, sf = summary(lists[XVMD]), summary(lists[FVD])
    rl = ratio(sx["median"], sf["median"])
    out["list"] = {XVMD: sx, FVD: sf, "ratio_median": rl, "raw_ms": lists}
    out["ready_ms"] = {
        label: {n: {**summary(v), "raw": v} for n, v in by.items()} for label, by in ready.items()
    }
    for label in ready:
        rr = ratio(out["ready_ms"][label][XVMD]["median"], out["ready_ms"][label][FVD]["median"])
        out["ready_ms"][label]["ratio_median"] = rr
    say(f"  list of {plan.scale_domains}: xvmd {sx['median']} ms, fence_virtd {sf['median']} ms")

    conf_dir = e.scratch / "ccs"
    conf_dir.mkdir(exist_ok=True)
    shutil.copy(e.key, conf_dir / "host1.key")
    for h in range(2, DEVICES + 1):
        write_key(conf_dir / f"host{h}.key")
    (conf_dir / "host1.key").chmod(0o600)
    conf = conf_dir / "cluster.conf"
    conf.write_text(cluster_conf(plan.ccs_nodes, 1))
    out["ccs"] = _ccs_inprocess(conf, plan.ccs_runs)
    out["ccs"]["nodes"] = plan.ccs_nodes
    lb = out["ccs"]["load_bytes"]
    say(f"  ccs.load_bytes {plan.ccs_nodes} nodes: median {lb['median']} ms, cold {lb['cold_ms']}")
    out["reload"] = _reload(e, conf, big, plan)
    rs = out["reload"]["served_s"]
    out["goals"] = [
        Goal("scale", f"fence_xvm -o list, {plan.scale_domains} domains: median ratio", f"{rl}",
             "<= 1.0", rl is not None and rl <= 1.0).asdict(),
        Goal("scale", f"ccs.load_bytes, {plan.ccs_nodes} nodes: median (ms)", f"{lb['median']}",
             "< 100", lb["median"] < 100, f"first call {lb['cold_ms']} ms").asdict(),
        Goal("scale", "reload: rename -> new snapshot served, worst (s)", f"{rs['max']}", "< 1",
             rs["max"] < 1.0).asdict(),
        *_ready_goals(out["ready_ms"], plan.scale_domains),
    ]  # fmt: skip
    return out
