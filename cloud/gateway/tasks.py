"""The tasks file (``fleetloop cloud --tasks tasks.yaml``): which policy runs where, as typed config.

A list of ``{name, policy, instruction, count, requires: {kind, embodiment, observations, cameras,
min_control_hz}}``; every entry is checked at start and an error names its key (``tasks[1].requires.kind: ...``).
The scheduler gets the ``Task``/``Requirements`` of ``cloud.gateway.fleet`` built from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field, RootModel, model_validator

from cloud.gateway.fleet import Requirements, Task
from cloud.security.devices import Device, dataset_of
from hal.config import ConfigModel, Items, invalid, read_yaml, validate
from hal.resource import RESOURCE_KINDS
from protocol.arrays import CodecError
from protocol.limits import REWARD_SUFFIX, check_policy_name
from protocol.steps import check_id


def _label(value: str) -> str:
    try:
        check_id(value, "", required=False)
    except CodecError as err:
        raise ValueError(err.message) from None
    return value


def _policy_name(value: str) -> str:
    try:
        check_policy_name(value, "")
    except CodecError as err:
        raise ValueError(err.message) from None
    return value


Label = Annotated[str, AfterValidator(_label)]  # printable and short; may be empty
Id = Annotated[str, Field(min_length=1), AfterValidator(_label)]


class TaskRequirements(ConfigModel):
    """What a resource must have to take the task; an empty field matches anything."""

    kind: Literal["", *RESOURCE_KINDS] = ""
    embodiment: Label = ""
    observations: Items[Id] = ()
    cameras: Items[Id] = ()
    min_control_hz: Annotated[float, Field(ge=0)] = 0.0


class TaskEntry(ConfigModel):
    name: Id | None = None  # None: the policy's name
    policy: Annotated[str, AfterValidator(_policy_name)]
    instruction: Label = ""
    count: Annotated[int, Field(ge=0)] = 1  # 0: every matching resource
    requires: TaskRequirements | None = None

    @property
    def task(self) -> Task:
        requires = self.requires or TaskRequirements()
        return Task(
            name=self.name or self.policy,
            policy_name=self.policy,
            instruction=self.instruction,
            count=self.count,
            requires=Requirements(**requires.model_dump()),
        )


class TaskFile(RootModel[list[TaskEntry]]):
    model_config = ConfigDict(frozen=True, strict=True)

    @model_validator(mode="after")
    def _unique_names(self) -> TaskFile:
        names = [entry.task.name for entry in self.root]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise invalid(f"duplicate task name {name!r}", i, "name")
        return self

    @property
    def tasks(self) -> tuple[Task, ...]:
        return tuple(entry.task for entry in self.root)


def load_tasks(path: str | Path) -> tuple[Task, ...]:
    """The tasks of a YAML file; a ``ConfigError`` (a ValueError) names the file or the offending key."""
    return validate(TaskFile, read_yaml(path), "tasks").tasks


def record_tasks(devices: Iterable[Device]) -> tuple[Task, ...]:
    """The tasks of a cloud that checks credentials and has no tasks file: one per (policy, dataset) an active robot's
    record lists, each taken by every robot of that dataset its credential lets run the policy. A record without
    embodiments pairs each policy with its own dataset; one without policies runs each dataset's own policy; a reward
    classifier is no task. Sorted by name: the same records give the same tasks."""
    tasks: dict[str, Task] = {}
    for device in devices:
        if device.kind != "robot" or device.revoked:
            continue
        policies = [p for p in device.policies if not p.endswith(REWARD_SUFFIX)] or device.embodiments
        for policy in policies:
            for embodiment in device.embodiments or (dataset_of(policy),):
                name = policy if embodiment == policy else f"{policy}@{embodiment}"
                requires = Requirements(kind="robot", embodiment=embodiment)
                tasks[name] = Task(name, policy, requires=requires, count=0)
    return tuple(tasks[name] for name in sorted(tasks))
