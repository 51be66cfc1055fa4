import logging

import pytest

from cloud.gateway.fleet import Backlog, FleetScheduler, Requirements, State, Task
from hal.resource import ArraySpec, Capabilities, ResourceInfo

ACTION = ArraySpec("action", "float32", (4,))


def robot(rid: str, embodiment: str = "panda", cameras: tuple[str, ...] = (), hz: float = 10.0) -> ResourceInfo:
    caps = Capabilities((ArraySpec("state", "float32", (21,)),), ACTION, hz, embodiment, cameras)
    return ResourceInfo(rid, "robot", caps, "sim")


def phone(rid: str) -> ResourceInfo:
    caps = Capabilities(
        (ArraySpec("camera", "uint8", (96, 96, 3)), ArraySpec("pose", "float32", (7,))),
        ArraySpec("gripper_width", "float32", (1,)),
        30.0,
        "phone",
        ("camera",),
    )
    return ResourceInfo(rid, "phone", caps, "phone")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fleet() -> tuple[FleetScheduler, Clock, list]:
    clock = Clock()
    assignments: list = []
    scheduler = FleetScheduler(
        lost_after_s=3.0,
        clock=clock,
        on_assign=lambda rid, task: assignments.append((rid, task.name if task else None)),
    )
    scheduler.add_task(Task("pick", "pick_policy", "pick up the cube", Requirements(embodiment="panda"), count=1))
    scheduler.add_task(Task("look", "look_policy", requires=Requirements(cameras=("wrist",)), count=1))
    return scheduler, clock, assignments


def test_assignments_match_capabilities(fleet) -> None:
    scheduler, _, _ = fleet
    scheduler.register(robot("a", embodiment="ur5"))
    scheduler.register(robot("b", embodiment="panda"))
    scheduler.register(robot("c", embodiment="ur5", cameras=("wrist",)))
    assert scheduler.task_of("a") is None and scheduler.members["a"].state == State.IDLE
    assert scheduler.task_of("b").name == "pick"
    assert scheduler.task_of("c").name == "look"


def test_lost_resource_hands_its_task_to_an_idle_capable_one(fleet) -> None:
    scheduler, clock, assignments = fleet
    scheduler.register(robot("b1"))
    scheduler.register(robot("b2"))
    assert scheduler.task_of("b1").name == "pick" and scheduler.task_of("b2") is None
    clock.now = 2.0
    scheduler.seen("b2")
    assert scheduler.check() == []
    clock.now = 4.0  # b1 silent for 4 s > 3 s, b2 seen 2 s ago
    assert scheduler.check() == ["b1"]
    assert scheduler.members["b1"].state == State.LOST
    assert scheduler.task_of("b2").name == "pick"
    assert ("b1", None) in assignments and ("b2", "pick") in assignments
    scheduler.seen("b1")  # its stream was alive after all: it comes back idle (its task has moved on)
    assert scheduler.members["b1"].state == State.IDLE


def test_a_tunnel_that_closes_is_lost_at_once_and_a_joiner_is_put_to_work(fleet) -> None:
    scheduler, _, _ = fleet
    scheduler.register(robot("b1"))
    scheduler.disconnected("b1")
    assert scheduler.members["b1"].state == State.LOST
    scheduler.register(robot("late"))
    assert scheduler.task_of("late").name == "pick"
    scheduler.register(robot("b1"))  # it comes back: idle, the task is taken
    assert scheduler.members["b1"].state == State.IDLE


def test_steps_mark_running_and_operator_commands(fleet) -> None:
    scheduler, _, _ = fleet
    scheduler.register(robot("b1"))
    scheduler.register(robot("b2"))
    scheduler.seen("b1", steps=10, interventions=2, policy_version=3)
    member = scheduler.members["b1"]
    assert (member.state, member.steps, member.interventions, member.policy_version) == (State.RUNNING, 10, 2, 3)
    scheduler.pause("b1")
    assert member.state == State.PAUSED and member.task == "pick"
    scheduler.resume("b1")
    assert member.state == State.ASSIGNED
    scheduler.drain("b1")
    assert member.state == State.DRAINING and scheduler.task_of("b2").name == "pick"
    with pytest.raises(KeyError, match="resource_id"):
        scheduler.stop("nobody")


def test_count_zero_takes_every_match_and_phones_are_resources(fleet) -> None:
    scheduler, _, _ = fleet
    scheduler.add_task(Task("demos", "demo_policy", requires=Requirements(kind="phone"), count=0))
    for i in range(3):
        scheduler.register(phone(f"phone-{i}"))
    assert {scheduler.task_of(f"phone-{i}").name for i in range(3)} == {"demos"}


def test_task_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="policy_name"):
        Task("t", "")
    with pytest.raises(ValueError, match="count"):
        Task("t", "p", count=-1)


def test_stop_takes_the_task_and_shows_stopped_until_resumed() -> None:
    scheduler = FleetScheduler()
    scheduler.add_task(Task("pick", "panda"))
    scheduler.register(robot("r1"))
    assert scheduler.members["r1"].task == "pick"
    scheduler.stop("r1")
    assert (scheduler.members["r1"].state, scheduler.members["r1"].task) == (State.STOPPED, "")
    scheduler.schedule()
    assert scheduler.members["r1"].state == State.STOPPED, "a stopped robot takes no task until resumed"
    scheduler.resume("r1")
    assert (scheduler.members["r1"].state, scheduler.members["r1"].task) == (State.ASSIGNED, "pick")


def test_an_emergency_stop_shows_until_released_then_the_robot_is_back_where_it_was() -> None:
    scheduler = FleetScheduler()
    scheduler.add_task(Task("pick", "panda"))
    scheduler.register(robot("r1"))
    scheduler.seen("r1", steps=5)
    assert scheduler.members["r1"].state == State.RUNNING
    scheduler.emergency_stopped("r1", released=False)
    scheduler.seen("r1", steps=0)
    assert scheduler.members["r1"].state == State.EMERGENCY_STOPPED
    scheduler.emergency_stopped("r1", released=True)
    assert scheduler.members["r1"].state == State.RUNNING


def test_a_robot_waiting_for_its_scene_shows_so_until_it_works_again(fleet) -> None:
    scheduler, clock, _ = fleet
    scheduler.register(robot("arm-1"))
    scheduler.seen("arm-1", steps=5)
    scheduler.reported("arm-1", "waiting for reset")
    member = scheduler.members["arm-1"]
    assert member.state == State.WAITING_FOR_RESET == "waiting for reset" and member.task == "pick"
    scheduler.seen("arm-1", steps=3)  # late steps of the episode that ended: still waiting
    assert member.state == State.WAITING_FOR_RESET
    scheduler.pause("arm-1")
    scheduler.reported("arm-1", "")  # an operator's pause outranks what the edge says
    assert member.state == State.PAUSED
    scheduler.resume("arm-1")
    scheduler.reported("arm-1", "waiting for reset")  # said again in every heartbeat: the view catches up
    assert member.state == State.WAITING_FOR_RESET
    scheduler.reported("arm-1", "")
    assert member.state == State.RUNNING
    clock.now = 10.0
    scheduler.check()
    scheduler.reported("arm-1", "waiting for reset")  # lost: no word from the edge changes that
    assert member.state == State.LOST


def test_a_robot_held_by_the_synchronous_schedule_shows_so_until_the_next_version_moves_it(fleet, caplog) -> None:
    caplog.set_level(logging.INFO)
    scheduler, _, _ = fleet
    scheduler.register(robot("arm-1"))
    scheduler.seen("arm-1", steps=5)
    scheduler.reported("arm-1", "waiting for a new version")
    member = scheduler.members["arm-1"]
    assert member.state == State.WAITING_FOR_VERSION == "waiting for a new version" and member.task == "pick"
    assert "arm-1 waits for the learner's next version (synchronous schedule)" in caplog.text
    scheduler.schedule()  # it keeps its task while it waits
    assert member.task == "pick"
    scheduler.reported("arm-1", "")
    assert member.state == State.RUNNING and "arm-1: a new version came; it works again" in caplog.text


def test_a_resource_takes_only_tasks_it_is_allowed_and_replaced_tasks_are_handed_out_again() -> None:
    allowed = {"r1": {"pick_policy"}, "r2": {"pick_policy", "place_policy"}}
    assignments: list = []
    scheduler = FleetScheduler(
        on_assign=lambda rid, task: assignments.append((rid, task.name if task else None)),
        allows=lambda rid, task: task.policy_name in allowed[rid],
    )
    scheduler.add_task(Task("place", "place_policy", count=0))
    scheduler.register(robot("r1"))
    scheduler.register(robot("r2"))
    assert assignments == [("r2", "place")]  # r1 may not run place_policy: it idles
    scheduler.set_tasks([Task("pick", "pick_policy", count=0)])  # place is gone: r2 is released and takes pick
    assert assignments[1:] == [("r2", None), ("r1", "pick"), ("r2", "pick")]
    assert {m.state for m in scheduler.members.values()} == {State.ASSIGNED}
    scheduler.set_tasks([Task("pick", "pick_policy", count=0)])  # the same tasks again: nobody is disturbed
    assert len(assignments) == 4


def test_the_backlog_an_edge_reports_is_kept_until_it_reports_again(fleet) -> None:
    scheduler, _clock, _ = fleet
    scheduler.register(robot("arm-1"))
    scheduler.reported("arm-1", "", Backlog(1240, 38_000_000, 42.0))
    assert scheduler.members["arm-1"].backlog == Backlog(1240, 38_000_000, 42.0)
    scheduler.reported("arm-1", "")  # a report without a backlog leaves the last one
    assert scheduler.members["arm-1"].backlog.steps == 1240
    scheduler.reported("arm-1", "", Backlog())
    assert scheduler.members["arm-1"].backlog.steps == 0
