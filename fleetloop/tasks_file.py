"""The tasks file of ``fleetloop cloud --tasks``: which policy runs on which resources."""

from __future__ import annotations

from pathlib import Path


def load_tasks(path: str):
    """Tasks from YAML: a list of {name, policy, instruction, count, requires: {kind, embodiment, ...}}.

    Every entry is checked; a ValueError names the offending key (``tasks[1].requires.min_control_hz: ...``).
    """
    import math

    import yaml

    from cloud.gateway.fleet import Requirements, Task
    from hal.resource import RESOURCE_KINDS
    from protocol.arrays import CodecError
    from protocol.limits import check_policy_name
    from protocol.steps import check_id

    try:
        entries = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of tasks")

    def text(value, key: str, required: bool = False) -> str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        try:
            check_id(value, key, required=required)
        except CodecError as err:
            raise ValueError(str(err)) from err
        return value

    def texts(value, key: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list of names, got {value!r}")
        return tuple(text(v, f"{key}[{j}]", required=True) for j, v in enumerate(value))

    tasks = []
    for i, entry in enumerate(entries):
        key = f"tasks[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{key}: expected a mapping")
        unknown = set(entry) - {"name", "policy", "instruction", "count", "requires"}
        if unknown:
            raise ValueError(f"{key}.{sorted(map(str, unknown))[0]}: unknown key")
        requires = entry.get("requires") or {}
        if not isinstance(requires, dict):
            raise ValueError(f"{key}.requires: expected a mapping, got {requires!r}")
        unknown = set(requires) - {"kind", "embodiment", "observations", "cameras", "min_control_hz"}
        if unknown:
            raise ValueError(f"{key}.requires.{sorted(map(str, unknown))[0]}: unknown key")
        policy = entry.get("policy")
        if not isinstance(policy, str):
            raise ValueError(f"{key}.policy: expected a policy name, got {policy!r}")
        try:
            check_policy_name(policy, f"{key}.policy")
        except CodecError as err:
            raise ValueError(str(err)) from err
        count = entry.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{key}.count: expected an integer >= 0 (0: every matching resource), got {count!r}")
        hz = requires.get("min_control_hz", 0.0)
        if isinstance(hz, bool) or not isinstance(hz, int | float) or not math.isfinite(hz) or hz < 0:
            raise ValueError(f"{key}.requires.min_control_hz: expected a number >= 0, got {hz!r}")
        kind = text(requires.get("kind", ""), f"{key}.requires.kind")
        if kind not in ("", *RESOURCE_KINDS):
            raise ValueError(f"{key}.requires.kind: must be one of {RESOURCE_KINDS}, got {kind!r}")
        tasks.append(
            Task(
                name=text(entry.get("name", policy), f"{key}.name", required=True),
                policy_name=policy,
                instruction=str(text(entry.get("instruction", ""), f"{key}.instruction")),
                count=count,
                requires=Requirements(
                    kind=kind,
                    embodiment=text(requires.get("embodiment", ""), f"{key}.requires.embodiment"),
                    observations=texts(requires.get("observations", []), f"{key}.requires.observations"),
                    cameras=texts(requires.get("cameras", []), f"{key}.requires.cameras"),
                    min_control_hz=float(hz),
                ),
            )
        )
    names = [t.name for t in tasks]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ValueError(f"tasks[{i}].name: duplicate task name {name!r}")
    return tuple(tasks)
