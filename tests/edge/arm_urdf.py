"""A small URDF of a 5-joint serial arm with a gripper, whose joints are named as the fake lerobot arm's
(hal/lerobot_fake.py) and the SO-101's: written as text by the tests, so placo solves a real arm with no download.

Its shape follows the SO-101's: a pan about z, three pitch joints about y (shoulder, elbow, wrist), a roll about x,
the gripper's jaw on a branch of its own and ``gripper_frame_link`` at the tip. Limits are in radians.
"""

from __future__ import annotations

from pathlib import Path

ARM = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll")
FRAME = "gripper_frame_link"
# joint: (axis, where it sits on its parent link, lower, upper)
SHAPE = {
    "shoulder_pan": ("0 0 1", "0 0 0.05", -2.0, 2.0),
    "shoulder_lift": ("0 1 0", "0 0 0.05", -1.8, 1.8),
    "elbow_flex": ("0 1 0", "0.11 0 0.03", -1.7, 1.7),
    "wrist_flex": ("0 1 0", "0.13 0 0", -1.7, 1.7),
    "wrist_roll": ("1 0 0", "0.03 0 0", -2.7, 2.7),
}


def joint(name: str, parent: str, axis: str, xyz: str, lower: float, upper: float) -> str:
    return (
        f'<joint name="{name}" type="revolute"><parent link="{parent}"/><child link="{name}_link"/>'
        f'<origin xyz="{xyz}" rpy="0 0 0"/><axis xyz="{axis}"/>'
        f'<limit lower="{lower}" upper="{upper}" effort="10" velocity="5"/></joint>'
    )


def arm_urdf(limits: dict[str, tuple[float, float]] | None = None, link_extra: str = "") -> str:
    """The arm as URDF text; ``limits`` overrides joints' (lower, upper); ``link_extra`` goes inside each link."""
    parts = ['<?xml version="1.0"?>', '<robot name="fleetloop_test_arm">', '<link name="base"/>']
    parent = "base"
    for name, (axis, xyz, lower, upper) in SHAPE.items():
        lower, upper = (limits or {}).get(name, (lower, upper))
        parts += [f'<link name="{name}_link">{link_extra}</link>', joint(name, parent, axis, xyz, lower, upper)]
        parent = f"{name}_link"
    parts += [
        '<link name="gripper_link"/>',
        joint("gripper", parent, "0 0 1", "0.02 0 0", -0.2, 1.7),  # the jaw: a branch, not on the way to the tip
        f'<link name="{FRAME}"/>',
        f'<joint name="{FRAME}_joint" type="fixed"><parent link="{parent}"/><child link="{FRAME}"/>'
        '<origin xyz="0.08 0 0" rpy="0 0 0"/></joint>',
        "</robot>",
    ]
    return "\n".join(parts)


def write_arm_urdf(folder: Path, **kwargs) -> Path:
    path = folder / "arm.urdf"
    path.write_text(arm_urdf(**kwargs))
    return path
