"""When the compactor moves acked batches into the store: a robot's trickle within 50 ms of the log going quiet, a
burst only once the uplink pauses (or its backlog or age bound is reached), so its encoding and store writes do not
take the cores the acks need."""

from __future__ import annotations

from cloud.data.store import StepRows
from cloud.gateway.cameras import StoreEncoder
from cloud.gateway.compactor import Compactor, Logged
from tests.factories import step_columns


def logged(number: int, steps: int) -> Logged:
    rows = StepRows("d", "ep", "r1", "sim", "", 0, dict(step_columns(steps, state=1000, action=2)))
    return Logged(number, [rows])


def test_a_trickle_is_moved_at_once_and_a_burst_waits_for_the_uplink_to_pause(tmp_path, monkeypatch) -> None:
    compactor = Compactor(None, StoreEncoder(), None, lambda taken: None, write_bytes=4 << 30)  # type: ignore[arg-type]
    now = [100.0]
    monkeypatch.setattr("cloud.gateway.compactor.time.monotonic", lambda: now[0])
    compactor.add(logged(0, 10))  # 40 kB: a robot's batch
    now[0] += 0.01
    assert not compactor.in_burst(now[0])
    assert abs(compactor._gather_s() - 0.04) < 1e-9  # 50 ms after its append
    for i in range(1, 301):  # 300 x 4 MB within 0.3 s: a backlog uploading
        now[0] += 0.001
        compactor.add(logged(i, 1000))
    assert compactor.in_burst(now[0])
    assert abs(compactor._gather_s() - 0.2) < 1e-9  # quiet now means a pause of the uplink
    now[0] += 0.15
    assert compactor._gather_s() > 0  # a gap between group commits is no pause
    now[0] += 1.2  # the burst is over a second old: the log is quiet, and no burst any more
    assert not compactor.in_burst(now[0]) and compactor._gather_s() == 0
    compactor.write_bytes = compactor.backlog_bytes  # the backlog bound starts it whatever the pace
    compactor.add(logged(301, 1000))
    assert compactor._gather_s() == 0
    compactor.close()
