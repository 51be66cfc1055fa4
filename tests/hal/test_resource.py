import numpy as np

from hal.resource import ArraySpec, Capabilities, ResourceInfo, clamp_action

BOUNDED = ArraySpec("action", "float32", (3,), (-1.0, -1.0, 0.0), (1.0, 1.0, 2.0))


def test_clamp_limits_and_nan_becomes_the_midpoint() -> None:
    clamped = clamp_action(np.array([5.0, np.nan, -3.0]), BOUNDED)
    np.testing.assert_array_equal(clamped, np.array([1.0, 0.0, 0.0], np.float32))
    assert clamped.dtype == np.float32


def test_unbounded_nan_becomes_zero() -> None:
    spec = ArraySpec("action", "float32", (2,))
    np.testing.assert_array_equal(clamp_action(np.array([np.inf, 2.0]), spec), [0.0, 2.0])


def test_resource_round_trips_through_the_wire() -> None:
    info = ResourceInfo("r1", "robot", Capabilities((ArraySpec("state", "<f4", (21,)),), BOUNDED, 10.0, "panda"))
    again = ResourceInfo.from_proto(info.to_proto())
    assert again.capabilities.action.low == BOUNDED.low
    assert again.capabilities.observation[0].shape == (21,)
    assert again.id == "r1" and again.capabilities.control_hz == 10.0
