"""A hello the cloud refuses by field (capabilities that clash with the stored dataset) stops the edge at once."""

from __future__ import annotations

import time

from cloud.data.store import ColumnSpec, EpisodeStore
from protocol.steps import schema_for
from tests.e2e.fleet import Fleet


def test_an_edge_whose_capabilities_clash_with_the_stored_dataset_stops_at_once(tmp_path) -> None:
    # Another robot stored "pusht" steps with another observation: this edge's hello is refused by field.
    store = EpisodeStore(tmp_path / "data" / "store")
    clash = schema_for([("agent_pos", "float32", (3,))], ("float32", (2,)))
    store.ensure_dataset("pusht", {name: ColumnSpec(dtype, shape) for name, (dtype, shape) in clash.items()})
    store.close()
    fleet = Fleet(tmp_path)
    fleet.start_cloud()
    try:
        edge = fleet.start_edge("cart-1", "--operator", "none", robot="sim:pusht", hz=20)
        started = time.monotonic()
        code = edge.wait(timeout=60)
        assert code == 3, fleet.log("cart-1")
        log = fleet.log("cart-1")
        assert "cart-1 stops: the cloud refused its hello (hello.resource.capabilities: do not match" in log
        assert log.count("the cloud refused hello.resource.capabilities") == 1, "it retried a refusal"
        assert time.monotonic() - started < 45
    finally:
        fleet.stop_all()
