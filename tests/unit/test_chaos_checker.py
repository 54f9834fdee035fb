"""The chaos run's checker (tests/support/chaos.py) can fail: recorded sequences that break the
safety rule are flagged, with the schedule that led to them; the same answers on a truth that
allows them are not."""

from __future__ import annotations

import json

from tests.support.chaos import (
    Answer,
    Checker,
    Instance,
    Truth,
    double_answers,
    recheck,
    violations,
)

ON_HOST3 = Instance(host=3, boot=1, domid=4)


def truth(**vms: set[Instance]) -> Truth:
    return {vm.replace("_", "-"): frozenset(inst) for vm, inst in vms.items()}


def test_off_answered_success_for_a_vm_on_a_cut_off_host_is_flagged_with_its_schedule() -> None:
    checker = Checker()
    checker.event({"event": "cut", "host": 3, "t": 1.0, "result": "ok"})
    running = truth(vm_3={ON_HOST3})
    found = checker.request(
        Answer("off", "node3", "fence_xvm", 5, "success", rc=0), running, running, t=2.0
    )
    assert found == [
        "off: success while vm-3 could run (active before: host3/boot1/id4; after: host3/boot1/id4)"
    ]
    [violation] = checker.violations
    assert violation["step"] == 1
    schedule = violation["schedule"]
    assert [s.get("event") or s.get("request") for s in schedule] == ["cut", "off"]
    assert schedule[1]["before"]["vm-3"] == ["host3/boot1/id4"]
    assert checker.requests[("off", "success")] == 1


# Steps of a real run (seed 7, trimmed): vm-1 moved to host 3; host 1, killed earlier, boots
# again; host 3 is cut off before host 1 has met it; host 1 later answers status OFF for vm-1.
RECORDED = """[
{"step": 87, "event": "move", "vm": "vm-1", "from": 2, "to": 3, "t": 44.98, "result": "ok"},
{"step": 94, "event": "restart", "host": 1, "t": 47.62, "result": "ok"},
{"step": 97, "event": "cut", "host": 3, "t": 48.55, "result": "ok"},
{"step": 98, "t": 48.62, "request": "off", "node": "node1", "vm": "vm-1", "client": "python",
 "timeout": 4, "outcome": "timeout", "rc": null, "connections": 0,
 "before": {"vm-1": ["host3/boot1/id11"], "vm-2": ["host2/boot1/id17"]},
 "after": {"vm-1": ["host3/boot1/id11"], "vm-2": ["host2/boot1/id17"]}},
{"step": 104, "t": 59.4, "request": "status", "node": "node1", "vm": "vm-1",
 "client": "fence_xvm", "timeout": 5, "outcome": "off", "rc": 2, "connections": null,
 "before": {"vm-1": ["host3/boot1/id11"], "vm-2": ["host2/boot1/id17"]},
 "after": {"vm-1": ["host3/boot1/id11"], "vm-2": ["host2/boot1/id17"]}}
]"""


def test_a_recorded_run_is_flagged_where_the_answer_broke_the_rule() -> None:
    checker = recheck(json.loads(RECORDED))
    [violation] = checker.violations
    assert violation["step"] == 4  # the status, after three events and a timed-out off
    assert violation["found"] == [
        "status: OFF while vm-1 could run (active before: host3/boot1/id11; "
        "after: host3/boot1/id11)"
    ]
    assert [s.get("event") or s.get("request") for s in violation["schedule"]] == [
        "move",
        "restart",
        "cut",
        "off",
        "status",
    ]
    assert checker.events["cut"] == 1 and checker.requests[("off", "timeout")] == 1


def test_status_off_while_running_anywhere_is_flagged() -> None:
    running = truth(vm_2={Instance(1, 2, 7)})
    answer = Answer("status", "node2", "python", 4, "off", rc=2, connections=1)
    assert violations(answer, running, running) == [
        "status: OFF while vm-2 could run (active before: host1/boot2/id7; after: host1/boot2/id7)"
    ]


def test_reboot_success_is_flagged_only_when_one_instance_ran_through() -> None:
    before = truth(vm_1={Instance(2, 1, 5)})
    same = truth(vm_1={Instance(2, 1, 5)})
    restarted = truth(vm_1={Instance(2, 1, 6)})
    answer = Answer("reboot", "node1", "fence_xvm", 6, "success", rc=0)
    assert violations(answer, before, same) == [
        "reboot: success while host2/boot1/id5 of vm-1 ran through "
        "(active before: host2/boot1/id5; after: host2/boot1/id5)"
    ]
    assert violations(answer, before, restarted) == []  # it went off and came back: a reboot
    # a copy elsewhere that was never touched keeps it running
    two = truth(vm_1={Instance(2, 1, 5), ON_HOST3})
    after = truth(vm_1={Instance(2, 1, 6), ON_HOST3})
    assert [v.split(":")[0] for v in violations(answer, two, after)] == ["reboot"]


def test_more_than_one_connect_back_is_flagged() -> None:
    off = truth()
    answer = Answer(
        "status", "node4", "python", 5, "off", rc=2, connections=2, peers=["10.77.0.1"] * 2
    )
    assert violations(answer, off, off) == [
        "one-answer: 2 connect-backs for one request (10.77.0.1, 10.77.0.1)"
    ]


def test_true_and_failed_answers_are_not_flagged() -> None:
    running = truth(vm_3={ON_HOST3})
    off = truth()
    checker = Checker()
    cases = [
        (Answer("off", "node3", "fence_xvm", 5, "success", rc=0), running, off),  # did it
        (Answer("off", "node3", "fence_xvm", 5, "failed", rc=1), running, running),
        (Answer("off", "node3", "fence_xvm", 5, "timeout", rc=1), running, running),
        (Answer("status", "node3", "fence_xvm", 5, "running", rc=0), running, running),
        (Answer("status", "node3", "fence_xvm", 5, "off", rc=2), off, off),
        (Answer("reboot", "node3", "fence_xvm", 5, "success", rc=0), off, off),
        (Answer("on", "node3", "python", 5, "success", rc=0, connections=1), off, running),
    ]
    for answer, before, after in cases:
        assert checker.request(answer, before, after) == [], answer
    assert checker.violations == []


def rec(op: str, seqno: int, result: str, epoch: float) -> dict[str, object]:
    return {"op": op, "seqno": seqno, "target": "node2", "result": result, "epoch": epoch}


def test_two_hosts_taking_one_request_to_a_connect_back_is_flagged() -> None:
    one = [(1, rec("off", 7, "dropped", 10.0)), (2, rec("off", 7, "success", 10.1))]
    assert double_answers(one) == []
    two = [(1, rec("off", 7, "failed", 10.0)), (3, rec("off", 7, "auth-failed", 10.2))]
    [double] = double_answers(two)
    assert double.line == (
        "one-answer (audit): off node2 seqno 7 -> host 1: failed, host 3: auth-failed"
    )
    later = [(1, rec("off", 7, "success", 10.0)), (3, rec("off", 7, "success", 900.0))]
    assert double_answers(later) == []  # the same seqno, another request


def test_the_audit_finding_lands_on_its_request_once() -> None:
    checker = Checker()
    off = truth()
    stock = Answer("off", "node2", "fence_xvm", 5, "failed", rc=1)
    python = Answer("off", "node2", "python", 5, "failed", rc=1, connections=2, peers=["a", "b"])
    checker.request(stock, off, off, wall=(100.0, 100.1))
    checker.request(python, off, off, wall=(200.0, 201.0))
    assert [v["step"] for v in checker.violations] == [1]  # the Python client counted two
    doubles = double_answers(
        [
            (1, rec("off", 5, "failed", 100.05)),
            (2, rec("off", 5, "success", 100.06)),
            (1, rec("off", 9, "failed", 200.01)),
            (3, rec("off", 9, "auth-failed", 200.02)),
        ]
    )
    checker.audit(doubles)
    assert [(v["step"], len(v["found"])) for v in checker.violations] == [(0, 1), (1, 1)]
    assert checker.violations[0]["found"][0].startswith("one-answer (audit): off node2")
    assert len(checker.violations[0]["schedule"]) == 1
