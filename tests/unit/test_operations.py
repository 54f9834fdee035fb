"""Fencing semantics over the Backend primitives: the fake backend, then libvirt's test driver."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.fakes import ManualClock
from xvmd.backend import AmbiguousDomain, BackendError, DomainInfo, DomainNotFound, DomainState
from xvmd.backend.fake import FakeBackend
from xvmd.core.operations import CONFIRM_TIMEOUT, Clock, Outcome, host_records, perform, resolve
from xvmd.protocol.wire import HostRecord, Op, Result

S = DomainState
UUID_RUN = "11111111-0000-4000-8000-000000000001"
UUID_PAUSED = "11111111-0000-4000-8000-000000000002"
UUID_OFF = "11111111-0000-4000-8000-000000000003"
UUID_TRANS = "11111111-0000-4000-8000-000000000004"
UUID_CRASHED = "11111111-0000-4000-8000-000000000005"
UUID_BLOCKED = "11111111-0000-4000-8000-000000000006"
UUID_PMS = "11111111-0000-4000-8000-000000000007"


def make_backend() -> FakeBackend:
    return FakeBackend(
        [
            DomainInfo("running", UUID_RUN, S.RUNNING),
            DomainInfo("paused", UUID_PAUSED, S.PAUSED),
            DomainInfo("shutoff", UUID_OFF, S.SHUTOFF),
            DomainInfo("transient", UUID_TRANS, S.RUNNING, persistent=False),
            DomainInfo("crashed", UUID_CRASHED, S.CRASHED),
            DomainInfo("blocked", UUID_BLOCKED, S.BLOCKED),
            DomainInfo("suspended", UUID_PMS, S.PMSUSPENDED),
        ]
    )


@pytest.fixture
def fake() -> FakeBackend:
    return make_backend()


def run(backend: FakeBackend, op: Op, name: str, clock: ManualClock) -> Outcome:
    return perform(backend, op, resolve(backend, name), clock.clock())


def state_of(backend: FakeBackend, uuid: str) -> DomainState | None:
    info = backend.state(uuid)
    return info.state if info else None


def called(backend: FakeBackend, name: str) -> list[str]:
    return [arg for call, arg in backend.calls if call == name]


# -- status ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("running", Result.SUCCESS),
        ("paused", Result.SUCCESS),
        ("shutoff", Result.OFF),
        ("missing", Result.OFF),
        ("crashed", Result.SUCCESS),
        ("blocked", Result.SUCCESS),
        ("suspended", Result.SUCCESS),
    ],
)
def test_status(fake: FakeBackend, manual_clock: ManualClock, name: str, expected: Result) -> None:
    before = list(fake.calls)
    out = run(fake, Op.STATUS, name, manual_clock)
    assert out.result is expected
    # status never changes anything
    assert not [c for c in fake.calls[len(before) :] if c[0] not in ("lookup", "state")]


def test_status_of_missing_says_so(fake: FakeBackend, manual_clock: ManualClock) -> None:
    out = run(fake, Op.STATUS, "missing", manual_clock)
    assert out.result is Result.OFF
    assert out.domain is None
    assert "no such domain" in out.detail


# -- off -------------------------------------------------------------------------------------------


def test_off_running(fake: FakeBackend, manual_clock: ManualClock) -> None:
    out = run(fake, Op.OFF, "running", manual_clock)
    assert out.result is Result.SUCCESS
    assert state_of(fake, UUID_RUN) is S.SHUTOFF
    assert called(fake, "destroy") == [UUID_RUN]


@pytest.mark.parametrize("name", ["paused", "crashed", "blocked", "suspended"])
def test_off_other_live_states(fake: FakeBackend, manual_clock: ManualClock, name: str) -> None:
    uuid = fake.lookup(name).uuid
    out = run(fake, Op.OFF, name, manual_clock)
    assert out.result is Result.SUCCESS
    assert state_of(fake, uuid) is S.SHUTOFF


def test_off_already_off_does_not_destroy(fake: FakeBackend, manual_clock: ManualClock) -> None:
    out = run(fake, Op.OFF, "shutoff", manual_clock)
    assert out.result is Result.SUCCESS
    assert called(fake, "destroy") == []
    assert state_of(fake, UUID_OFF) is S.SHUTOFF


def test_off_missing_fails(fake: FakeBackend, manual_clock: ManualClock) -> None:
    out = run(fake, Op.OFF, "missing", manual_clock)
    assert out.result is Result.FAIL
    assert called(fake, "destroy") == []


def test_off_transient_domain_disappears(fake: FakeBackend, manual_clock: ManualClock) -> None:
    out = run(fake, Op.OFF, "transient", manual_clock)
    assert out.result is Result.SUCCESS
    assert fake.state(UUID_TRANS) is None


def test_off_that_does_nothing_fails_after_confirm_timeout(
    fake: FakeBackend, manual_clock: ManualClock
) -> None:
    fake.destroy_leaves_state = S.RUNNING
    out = run(fake, Op.OFF, "running", manual_clock)
    assert out.result is Result.FAIL
    assert "still running" in out.detail
    assert called(fake, "destroy") == [UUID_RUN]
    assert CONFIRM_TIMEOUT <= manual_clock.elapsed < CONFIRM_TIMEOUT + 1.0
    assert state_of(fake, UUID_RUN) is S.RUNNING


def test_off_confirm_timeout_is_configurable(fake: FakeBackend, manual_clock: ManualClock) -> None:
    fake.destroy_leaves_state = S.RUNNING
    dom = resolve(fake, "running")
    out = perform(fake, Op.OFF, dom, manual_clock.clock(), confirm_timeout=2.0)
    assert out.result is Result.FAIL
    assert 2.0 <= manual_clock.elapsed < 3.0


def test_off_when_destroy_raises_and_domain_stays_up(
    fake: FakeBackend, manual_clock: ManualClock
) -> None:
    fake.fail["destroy"] = "permission denied"
    out = run(fake, Op.OFF, "running", manual_clock)
    assert out.result is Result.FAIL
    assert "permission denied" in out.detail
    assert state_of(fake, UUID_RUN) is S.RUNNING


class RacingShutdownBackend(FakeBackend):
    """destroy fails because the guest shut itself down at the same moment."""

    def destroy(self, uuid: str) -> None:
        super().destroy(uuid)  # the guest is off (a persistent domain stays defined)...
        raise BackendError("domain is not running")  # ...and libvirt reports a failure


def test_off_when_destroy_raises_but_domain_is_off(manual_clock: ManualClock) -> None:
    backend = RacingShutdownBackend([DomainInfo("running", UUID_RUN, S.RUNNING)])
    out = run(backend, Op.OFF, "running", manual_clock)
    assert out.result is Result.SUCCESS


def test_off_with_hypervisor_down(fake: FakeBackend, manual_clock: ManualClock) -> None:
    dom = resolve(fake, "running")
    fake.available = False
    out = perform(fake, Op.OFF, dom, manual_clock.clock())
    assert out.result is Result.FAIL
    assert "unavailable" in out.detail


# -- on --------------------------------------------------------------------------------------------


def test_on_shutoff(fake: FakeBackend, manual_clock: ManualClock) -> None:
    out = run(fake, Op.ON, "shutoff", manual_clock)
    assert out.result is Result.SUCCESS
    assert state_of(fake, UUID_OFF) is S.RUNNING
    assert called(fake, "start") == [UUID_OFF]


def test_on_paused_resumes(fake: FakeBackend, manual_clock: ManualClock) -> None:
    out = run(fake, Op.ON, "paused", manual_clock)
    assert out.result is Result.SUCCESS
    assert state_of(fake, UUID_PAUSED) is S.RUNNING
    assert called(fake, "resume") == [UUID_PAUSED]
    assert called(fake, "start") == []


def test_on_running_is_a_no_op(fake: FakeBackend, manual_clock: ManualClock) -> None:
    out = run(fake, Op.ON, "running", manual_clock)
    assert out.result is Result.SUCCESS
    assert called(fake, "start") == called(fake, "resume") == called(fake, "destroy") == []


def test_on_crashed_destroys_then_starts(fake: FakeBackend, manual_clock: ManualClock) -> None:
    out = run(fake, Op.ON, "crashed", manual_clock)
    assert out.result is Result.SUCCESS
    assert state_of(fake, UUID_CRASHED) is S.RUNNING
    assert [c for c, _ in fake.calls if c in ("destroy", "start")] == ["destroy", "start"]


def test_on_missing_fails(fake: FakeBackend, manual_clock: ManualClock) -> None:
    assert run(fake, Op.ON, "missing", manual_clock).result is Result.FAIL


def test_on_start_error(fake: FakeBackend, manual_clock: ManualClock) -> None:
    fake.fail["start"] = "no memory"
    out = run(fake, Op.ON, "shutoff", manual_clock)
    assert out.result is Result.FAIL
    assert "no memory" in out.detail


class LazyStartBackend(FakeBackend):
    """start reports success but the domain never boots."""

    def start(self, uuid: str) -> None:
        self.calls.append(("start", uuid))


def test_on_that_does_nothing_fails_after_confirm_timeout(manual_clock: ManualClock) -> None:
    backend = LazyStartBackend([DomainInfo("shutoff", UUID_OFF, S.SHUTOFF)])
    out = run(backend, Op.ON, "shutoff", manual_clock)
    assert out.result is Result.FAIL
    assert "still shutoff" in out.detail
    assert manual_clock.elapsed >= CONFIRM_TIMEOUT


# -- reboot ----------------------------------------------------------------------------------------


def test_reboot_running_persistent(fake: FakeBackend, manual_clock: ManualClock) -> None:
    out = run(fake, Op.REBOOT, "running", manual_clock)
    assert out.result is Result.SUCCESS
    assert state_of(fake, UUID_RUN) is S.RUNNING
    assert called(fake, "destroy") == [UUID_RUN]
    assert called(fake, "start") == [UUID_RUN]
    assert [c for c, _ in fake.calls if c in ("destroy", "start")] == ["destroy", "start"]
    assert called(fake, "create_transient") == []


def test_reboot_paused(fake: FakeBackend, manual_clock: ManualClock) -> None:
    out = run(fake, Op.REBOOT, "paused", manual_clock)
    assert out.result is Result.SUCCESS
    assert state_of(fake, UUID_PAUSED) is S.RUNNING
    assert called(fake, "destroy") == [UUID_PAUSED]
    assert called(fake, "start") == [UUID_PAUSED]


def test_reboot_transient_recreates(fake: FakeBackend, manual_clock: ManualClock) -> None:
    out = run(fake, Op.REBOOT, "transient", manual_clock)
    assert out.result is Result.SUCCESS
    assert "transient" in out.detail
    power = ("definition", "destroy", "create_transient", "start")
    assert [c for c, _ in fake.calls if c in power] == ["definition", "destroy", "create_transient"]
    info = fake.state(UUID_TRANS)
    assert info is not None
    assert info.state is S.RUNNING
    assert info.persistent is False


def test_reboot_transient_recreate_fails(fake: FakeBackend, manual_clock: ManualClock) -> None:
    fake.fail["create_transient"] = "xml rejected"
    out = run(fake, Op.REBOOT, "transient", manual_clock)
    assert out.result is Result.FAIL
    assert "powered off" in out.detail
    assert "xml rejected" in out.detail
    assert fake.state(UUID_TRANS) is None


def test_reboot_restart_fails(fake: FakeBackend, manual_clock: ManualClock) -> None:
    fake.fail["start"] = "boom"
    out = run(fake, Op.REBOOT, "running", manual_clock)
    assert out.result is Result.FAIL
    assert "powered off" in out.detail
    assert "boom" in out.detail
    assert state_of(fake, UUID_RUN) is S.SHUTOFF


def test_reboot_shutoff_stays_off(fake: FakeBackend, manual_clock: ManualClock) -> None:
    out = run(fake, Op.REBOOT, "shutoff", manual_clock)
    assert out.result is Result.SUCCESS
    assert state_of(fake, UUID_OFF) is S.SHUTOFF
    assert called(fake, "destroy") == called(fake, "start") == []


def test_reboot_missing_fails(fake: FakeBackend, manual_clock: ManualClock) -> None:
    assert run(fake, Op.REBOOT, "missing", manual_clock).result is Result.FAIL


def test_reboot_where_destroy_does_nothing(fake: FakeBackend, manual_clock: ManualClock) -> None:
    fake.destroy_leaves_state = S.RUNNING
    out = run(fake, Op.REBOOT, "running", manual_clock)
    assert out.result is Result.FAIL
    assert called(fake, "start") == []


# -- monitor, null and other ops -------------------------------------------------------------------


def test_monitor_available(fake: FakeBackend, manual_clock: ManualClock) -> None:
    out = perform(fake, Op.DEVSTATUS, None, manual_clock.clock())
    assert out.result is Result.SUCCESS
    assert ("ping", "") in fake.calls


def test_monitor_unavailable(fake: FakeBackend, manual_clock: ManualClock) -> None:
    fake.available = False
    out = perform(fake, Op.DEVSTATUS, None, manual_clock.clock())
    assert out.result is Result.FAIL
    assert "unavailable" in out.detail


def test_null_fails(fake: FakeBackend, manual_clock: ManualClock) -> None:
    out = perform(fake, Op.NULL, None, manual_clock.clock())
    assert out.result is Result.FAIL
    assert fake.calls == []


def test_hostlist_is_not_a_per_domain_operation(
    fake: FakeBackend, manual_clock: ManualClock
) -> None:
    assert perform(fake, Op.HOSTLIST, None, manual_clock.clock()).result is Result.FAIL


def test_host_records(fake: FakeBackend) -> None:
    records = host_records(fake)
    assert HostRecord("running", UUID_RUN, 1) in records
    assert HostRecord("shutoff", UUID_OFF, 5) in records
    assert HostRecord("paused", UUID_PAUSED, 3) in records
    assert len(records) == 7


def test_resolve(fake: FakeBackend) -> None:
    by_name = resolve(fake, "paused")
    assert by_name is not None and by_name.uuid == UUID_PAUSED
    by_uuid = resolve(fake, UUID_PAUSED.upper())
    assert by_uuid is not None and by_uuid.name == "paused"
    assert resolve(fake, "nope") is None


def test_no_real_sleep(fake: FakeBackend, manual_clock: ManualClock) -> None:
    fake.destroy_leaves_state = S.RUNNING
    t0 = time.monotonic()
    run(fake, Op.OFF, "running", manual_clock)
    assert time.monotonic() - t0 < 2.0
    assert manual_clock.sleeps


# -- libvirt's test driver, in process -------------------------------------------------------------

libvirt = pytest.importorskip("libvirt")

from xvmd.backend.libvirt import LibvirtBackend  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "domains.xml"
REAL_CLOCK = Clock(time.monotonic, time.sleep)
DEFAULT_UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"


@pytest.fixture
def lv_default() -> Iterator[LibvirtBackend]:
    # test:///default is shared by the connections open in this process and reset when the last
    # one closes: closing keeps the tests independent.
    backend = LibvirtBackend("test:///default")
    yield backend
    backend.close()


@pytest.fixture
def lv() -> Iterator[LibvirtBackend]:
    backend = LibvirtBackend(f"test://{FIXTURE}")
    yield backend
    backend.close()


def lv_run(backend: LibvirtBackend, op: Op, name: str) -> Outcome:
    return perform(backend, op, resolve(backend, name), REAL_CLOCK, confirm_timeout=5.0)


def lv_state(backend: LibvirtBackend, name: str) -> DomainState:
    return backend.lookup(name).state


def test_libvirt_default_driver(lv_default: LibvirtBackend) -> None:
    doms = lv_default.list_domains()
    assert [(d.name, d.uuid, d.state) for d in doms] == [("test", DEFAULT_UUID, S.RUNNING)]
    assert lv_default.lookup("test").uuid == DEFAULT_UUID
    assert lv_default.lookup(DEFAULT_UUID).name == "test"
    assert lv_default.lookup("TEST").name == "test"
    assert lv_run(lv_default, Op.STATUS, "test").result is Result.SUCCESS
    assert lv_run(lv_default, Op.OFF, "test").result is Result.SUCCESS
    assert lv_state(lv_default, "test") is S.SHUTOFF
    assert lv_run(lv_default, Op.STATUS, "test").result is Result.OFF
    assert lv_run(lv_default, Op.ON, "test").result is Result.SUCCESS
    assert lv_state(lv_default, "test") is S.RUNNING


def test_libvirt_fixture_lists_all_domains(lv: LibvirtBackend) -> None:
    assert FIXTURE.is_file()
    doms = lv.list_domains()
    assert len(doms) == 43
    assert len({d.uuid for d in doms}) == 43
    states = {d.name: d.state for d in doms}
    assert states["Paused-A"] is S.PAUSED
    assert states["off-1"] is S.SHUTOFF
    assert states["vm-01"] is S.RUNNING
    assert len(host_records(lv)) == 43


def test_libvirt_lookup(lv: LibvirtBackend) -> None:
    assert lv.lookup("vm-01").uuid == "00000001-0000-4000-8000-5eed00000001"
    assert lv.lookup("0000001c-0000-4000-8000-5eed0000001c").name == "WebServer"
    assert lv.lookup("0000001C-0000-4000-8000-5EED0000001C").name == "WebServer"
    assert lv.lookup("webserver").name == "WebServer"
    assert lv.lookup("WEBSERVER").name == "WebServer"
    assert lv.lookup("guest.example.com").uuid == "0000002b-0000-4000-8000-5eed0000002b"
    assert lv.lookup("x" * 63).uuid == "0000002a-0000-4000-8000-5eed0000002a"


def test_libvirt_lookup_ambiguous_case(lv: LibvirtBackend) -> None:
    # "Db" matches both "db" and "DB": an error, not "absent" (which would answer OFF to status).
    with pytest.raises(BackendError) as info:
        lv.lookup("Db")
    assert not isinstance(info.value, DomainNotFound)
    assert "ambiguous" in str(info.value)
    assert "DB" in str(info.value) and "db" in str(info.value)
    with pytest.raises(BackendError):
        resolve(lv, "Db")
    assert lv.lookup("DB").uuid == "0000001f-0000-4000-8000-5eed0000001f"
    assert lv.lookup("db").uuid == "0000001e-0000-4000-8000-5eed0000001e"
    assert lv.lookup("NODE1").name == "Node1"  # unique case-insensitive match


def test_libvirt_lookup_missing(lv: LibvirtBackend) -> None:
    with pytest.raises(DomainNotFound):
        lv.lookup("no-such-vm")
    with pytest.raises(DomainNotFound):
        lv.lookup("99999999-0000-4000-8000-000000000000")
    assert lv.state("99999999-0000-4000-8000-000000000000") is None


def test_libvirt_off_on_reboot(lv: LibvirtBackend) -> None:
    assert lv_run(lv, Op.OFF, "vm-01").result is Result.SUCCESS
    assert lv_state(lv, "vm-01") is S.SHUTOFF
    assert lv_run(lv, Op.OFF, "vm-01").result is Result.SUCCESS  # already off
    assert lv_run(lv, Op.REBOOT, "vm-01").result is Result.SUCCESS  # fenced: left off
    assert lv_state(lv, "vm-01") is S.SHUTOFF
    assert lv_run(lv, Op.ON, "vm-01").result is Result.SUCCESS
    assert lv_state(lv, "vm-01") is S.RUNNING
    assert lv_run(lv, Op.REBOOT, "webserver").result is Result.SUCCESS
    assert lv_state(lv, "WebServer") is S.RUNNING
    assert lv_run(lv, Op.ON, "Paused-A").result is Result.SUCCESS
    assert lv_state(lv, "Paused-A") is S.RUNNING
    assert lv_run(lv, Op.OFF, "missing").result is Result.FAIL
    assert lv_run(lv, Op.STATUS, "off-2").result is Result.OFF
    assert lv_run(lv, Op.STATUS, "paused-b").result is Result.SUCCESS


def test_libvirt_reboot_transient(lv: LibvirtBackend) -> None:
    uuid = "000000ff-0000-4000-8000-5eed000000ff"
    lv.create_transient(
        "<domain type='test'><name>transient-1</name>"
        f"<uuid>{uuid}</uuid><memory>65536</memory><os><type>hvm</type></os></domain>"
    )
    dom = lv.lookup("transient-1")
    assert dom.persistent is False
    assert lv_run(lv, Op.REBOOT, "transient-1").result is Result.SUCCESS
    assert lv_state(lv, "transient-1") is S.RUNNING
    assert lv_run(lv, Op.OFF, "transient-1").result is Result.SUCCESS
    assert lv.state(uuid) is None


def test_libvirt_monitor(lv: LibvirtBackend) -> None:
    assert perform(lv, Op.DEVSTATUS, None, REAL_CLOCK).result is Result.SUCCESS
    assert lv.check_connection()


def test_libvirt_unreachable(tmp_path: Path) -> None:
    backend = LibvirtBackend(f"test://{tmp_path}/missing.xml")
    try:
        assert backend.check_connection() is False
        out = perform(backend, Op.DEVSTATUS, None, REAL_CLOCK)
        assert out.result is Result.FAIL
        assert "unavailable" in out.detail
    finally:
        backend.close()


# -- lookup modes (loose: --no-ccs; exact and UUID-only: cluster.conf), on both backends ----------

CASE_FIXTURE = FIXTURE.parent / "domains-case.xml"
U2 = "00000002-0000-4000-8000-5eed00000002"  # victim's UUID, and another domain's name
SELF = "c0000005-0000-4000-8000-5eed00000005"  # a domain named after its own UUID
CASE_DOMAINS = [  # the same domains as CASE_FIXTURE
    DomainInfo("guest-1", "c0000001-0000-4000-8000-5eed00000001", S.RUNNING),
    DomainInfo("Tenant-Web", "c0000002-0000-4000-8000-5eed00000002", S.RUNNING),
    DomainInfo("victim", U2, S.RUNNING),
    DomainInfo(U2, "c0000003-0000-4000-8000-5eed00000003", S.RUNNING),
    DomainInfo(SELF, SELF, S.RUNNING),
]
LOOSE: dict[str, bool] = {}
EXACT = {"exact": True}
UUID_ONLY = {"uuid_only": True}


@pytest.fixture(params=["fake", "libvirt"])
def case_backend(request: pytest.FixtureRequest) -> Iterator[FakeBackend | LibvirtBackend]:
    if request.param == "fake":
        yield FakeBackend(CASE_DOMAINS)
        return
    backend = LibvirtBackend(f"test://{CASE_FIXTURE}")
    yield backend
    backend.close()


@pytest.mark.parametrize(
    ("target", "how", "expected"),
    [
        ("Tenant-Web", LOOSE, "Tenant-Web"),
        ("tenant-web", LOOSE, "Tenant-Web"),  # --no-ccs: a unique case-insensitive match
        (U2, LOOSE, "victim"),  # UUID form: by UUID
        ("Tenant-Web", EXACT, "Tenant-Web"),
        ("tenant-web", EXACT, None),  # never another tenant's VM that differs in case
        (SELF, EXACT, SELF),  # its name and its UUID: one domain
        (SELF.upper(), EXACT, SELF),  # by UUID in any case (names are exact)
        ("c0000009-0000-4000-8000-5eed00000009", EXACT, None),
        (U2, UUID_ONLY, "victim"),
        (U2.upper(), UUID_ONLY, "victim"),
        ("guest-1", UUID_ONLY, None),  # a name is no UUID
    ],
)
def test_lookup_modes(
    case_backend: FakeBackend | LibvirtBackend,
    target: str,
    how: dict[str, bool],
    expected: str | None,
) -> None:
    found = resolve(case_backend, target, **how)
    assert (found.name if found else None) == expected
    if expected is None:
        with pytest.raises(DomainNotFound):
            case_backend.lookup(target, **how)


def test_exact_lookup_refuses_a_name_and_a_uuid_of_two_domains(
    case_backend: FakeBackend | LibvirtBackend,
) -> None:
    with pytest.raises(AmbiguousDomain) as info:
        resolve(case_backend, U2, exact=True)  # ambiguous is an error, not "absent"
    assert str(info.value) == (
        f"VM '{U2}' is ambiguous: the name of domain {U2} and the UUID of domain victim"
    )
    assert isinstance(info.value, BackendError)
    for d in CASE_DOMAINS:
        assert case_backend.state(d.uuid) == d  # nothing was touched
