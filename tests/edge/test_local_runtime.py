import threading
import time

import numpy as np

from edge.local_runtime import LocalPolicyRuntime
from policies.factory import make_policy
from policies.weights import policy_to_bytes

CONFIG = {"observation": {"state": {"shape": [3], "dtype": "float32"}}, "action_dim": 2, "chunk_size": 4, "hidden": [8]}
OBS = {"state": np.zeros(3, np.float32)}


def weights(bias: float) -> bytes:
    policy = make_policy("mlp", CONFIG)
    for parameter in policy.parameters():
        parameter.data.zero_()
    policy.net[-1].bias.data.fill_(bias)  # every action == bias (normalization is the identity)
    return policy_to_bytes(policy)


def wait_loaded(runtime: LocalPolicyRuntime) -> None:
    deadline = time.monotonic() + 10
    while runtime._ready is None and time.monotonic() < deadline:
        time.sleep(0.01)


def test_no_policy_gives_no_action() -> None:
    runtime = LocalPolicyRuntime()
    assert runtime.next_action(OBS, deadline=time.monotonic() + 0.1) == (None, 0)
    runtime.close()


def test_swap_happens_only_at_a_tick_boundary_and_drops_old_actions() -> None:
    swapped = []
    runtime = LocalPolicyRuntime(on_swapped=lambda name, version: swapped.append((name, version)))
    runtime.load("p", 1, weights(0.5))
    wait_loaded(runtime)
    assert runtime.version == 0, "a loaded policy must wait for the next tick"
    assert runtime.begin_tick()
    action, version = runtime.next_action(OBS, deadline=time.monotonic() + 1)
    assert version == 1 and np.allclose(action, 0.5)
    runtime.load("p", 2, weights(-0.5))
    wait_loaded(runtime)
    # Mid-chunk: v1's queued actions keep coming until the boundary...
    assert runtime.next_action(OBS, deadline=time.monotonic() + 1)[1] == 1
    assert runtime.begin_tick()
    # ...after it, no action from v1 is applied.
    action, version = runtime.next_action(OBS, deadline=time.monotonic() + 1)
    assert version == 2 and np.allclose(action, -0.5)
    assert swapped == [("p", 1), ("p", 2)]
    runtime.close()


def test_older_or_broken_versions_are_not_swapped_in() -> None:
    runtime = LocalPolicyRuntime()
    runtime.load("p", 2, weights(0.1))
    wait_loaded(runtime)
    runtime.begin_tick()
    runtime.load("p", 1, weights(0.9))
    runtime.load("p", 3, b"not safetensors")
    time.sleep(0.3)
    assert not runtime.begin_tick()
    assert runtime.version == 2
    runtime.close()


def offer(runtime: LocalPolicyRuntime, version: int, bias: float) -> bool:
    """Loads a version and tries to swap it in at the next tick; True when it was."""
    runtime.load("p", version, weights(bias))
    wait_loaded(runtime)
    return runtime.begin_tick()


def test_an_older_version_replaces_one_only_when_the_cloud_rolled_that_one_back() -> None:
    runtime = LocalPolicyRuntime()
    assert offer(runtime, 1, 0.1) and offer(runtime, 2, 0.9)
    runtime.roll_back_to("p", 3, 1)  # a rollback of a version it does not run moves nothing
    assert not offer(runtime, 1, 0.1) and runtime.version == 2
    runtime.roll_back_to("p", 2, 1)  # PolicyRollback: v2 rolled back, v1's weights follow
    assert offer(runtime, 1, 0.1) and runtime.version == 1
    action, version = runtime.next_action(OBS, deadline=time.monotonic() + 1)
    assert version == 1 and np.allclose(action, 0.1)
    runtime.load("p", 2, weights(0.9))  # the rolled back version is never swapped in again
    time.sleep(0.3)
    assert not runtime.begin_tick() and runtime.version == 1
    runtime.close()


def test_slow_inference_misses_the_deadline_without_blocking() -> None:
    runtime = LocalPolicyRuntime()
    runtime.load("p", 1, weights(0.0))
    wait_loaded(runtime)
    runtime.begin_tick()
    release = threading.Event()
    policy = runtime._active.policy
    original = policy.act
    policy.act = lambda obs: (release.wait(5), original(obs))[1]
    started = time.monotonic()
    assert runtime.next_action(OBS, deadline=started + 0.05) == (None, 1)
    assert time.monotonic() - started < 0.5
    assert runtime.late_inferences == 1
    release.set()
    runtime.close()


def test_deltas_apply_on_a_held_version_and_one_without_its_base_is_rejected() -> None:
    from policies.updates import WireState, build_update

    rejected: list[tuple[str, int, str]] = []
    runtime = LocalPolicyRuntime(
        on_rejected=lambda name, version, reason, bad: rejected.append((name, version, reason))
    )
    v1, v2, v3 = (WireState.from_weights(weights(bias), version) for version, bias in ((1, 0.1), (2, 0.2), (3, 0.3)))
    runtime.load("p", 1, build_update(v1).payload)
    wait_loaded(runtime)
    assert runtime.begin_tick() and runtime.version == 1
    delta = build_update(v2, base=v1)
    assert delta.kind == "delta"
    runtime.load("p", 2, delta.payload)
    wait_loaded(runtime)
    assert runtime.begin_tick() and runtime.version == 2
    assert runtime.active.update_bytes == len(delta.payload)
    np.testing.assert_allclose(runtime.next_action(OBS, deadline=time.monotonic() + 5)[0], [0.2, 0.2])
    runtime.load("p", 3, build_update(v3, base=WireState.from_weights(weights(9.0), 7)).payload)
    deadline = time.monotonic() + 10
    while not rejected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rejected and rejected[0][:2] == ("p", 3) and "v7" in rejected[0][2]
    assert not runtime.begin_tick() and runtime.version == 2
    runtime.close()


def test_a_version_with_non_finite_actions_is_rolled_back_and_never_swapped_in_again() -> None:
    events: list[tuple] = []
    runtime = LocalPolicyRuntime(
        on_swapped=lambda name, version: events.append(("swapped", version)),
        on_rejected=lambda name, version, reason, bad: events.append(("rejected", version, bad)),
    )
    runtime.load("p", 1, weights(0.5))
    wait_loaded(runtime)
    assert runtime.begin_tick()
    runtime.load("p", 2, weights(float("nan")))
    wait_loaded(runtime)
    assert runtime.begin_tick() and runtime.version == 2
    action, version = runtime.next_action(OBS, deadline=time.monotonic() + 5)
    assert action is None and version == 2  # a NaN chunk is never applied
    assert runtime.begin_tick() and runtime.version == 1  # rolled back at the next tick boundary
    np.testing.assert_allclose(runtime.next_action(OBS, deadline=time.monotonic() + 5)[0], [0.5, 0.5])
    assert events == [("swapped", 1), ("swapped", 2), ("rejected", 2, True), ("swapped", 1)]
    assert runtime.rollbacks == 1 and runtime.bad_versions == {2}
    runtime.load("p", 2, weights(float("nan")))  # the same version again: refused at the boundary
    wait_loaded(runtime)
    assert not runtime.begin_tick() and runtime.version == 1
    runtime.close()
