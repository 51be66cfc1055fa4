"""A robot's URDF, checked before a kinematics library opens it.

placo (under lerobot's ``RobotKinematics``) reads whatever file it is given and every mesh that file names, so a
path from a config is opened only when it is a regular file of bounded size that parses as XML whose root is
``<robot>``, declares no DOCTYPE or entities, and names meshes only by paths inside its own folder (where placo
looks for them). Every refusal is a ``ConfigError`` at the config's field (``kinematics.urdf: no such file ...``).
"""

from __future__ import annotations

import re
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from hal.config import ConfigError

MAX_URDF_BYTES = 4 * 2**20  # a URDF is text; a real arm's (the SO-101's) is about 30 KB
MAX_MESH_BYTES = 64 * 2**20  # one mesh file; the SO-101's largest STL is about 2 MB
_DECLARATION = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)  # entity expansion: no URDF needs it
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # package://, file://, http://
_LISTED = 12  # names listed in an error before "..."


@dataclass(frozen=True)
class Urdf:
    """What a checked URDF declares: its moving joints (name -> type) and its links, in file order."""

    path: Path
    joints: dict[str, str]
    links: tuple[str, ...]

    def moving(self) -> tuple[str, ...]:
        return tuple(name for name, kind in self.joints.items() if kind != "fixed")


def listed(names: tuple[str, ...] | list[str]) -> str:
    """Names for an error, the first dozen of them."""
    shown = ", ".join(names[:_LISTED])
    return shown + (", ..." if len(names) > _LISTED else "") if names else "none"


def _regular_file(path: Path, field: str, what: str, limit: int) -> None:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(field, f"no such file: {path}") from None
    except OSError as err:
        raise ConfigError(field, f"cannot read {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(field, f"{path} is not a regular file")
    if info.st_size > limit:
        raise ConfigError(field, f"{path} is {info.st_size} bytes; a {what} may be at most {limit}")


def read_urdf(path: str | Path, field: str) -> Urdf:
    """The URDF at ``path`` checked as the module docstring says; ConfigError at ``field`` otherwise."""
    path = Path(path)
    _regular_file(path, field, "URDF", MAX_URDF_BYTES)
    try:
        text = path.read_bytes()
    except OSError as err:
        raise ConfigError(field, f"cannot read {path}: {err.strerror or err}") from None
    if _DECLARATION.search(text):
        raise ConfigError(field, f"{path} declares a DOCTYPE or entities, which a URDF has no need of: refused")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise ConfigError(field, f"{path} is not XML: {err}") from None
    if root.tag != "robot":
        raise ConfigError(field, f"{path} is not a URDF: its root element is <{root.tag}>, not <robot>")
    joints = {str(j.get("name")): str(j.get("type")) for j in root.iter("joint") if j.get("name")}
    links = tuple(str(link.get("name")) for link in root.iter("link") if link.get("name"))
    if not links:
        raise ConfigError(field, f"{path} declares no link")
    folder = path.resolve().parent
    for mesh in root.iter("mesh"):
        _check_mesh(str(mesh.get("filename") or ""), folder, field)
    return Urdf(path, joints, links)


def _check_mesh(name: str, folder: Path, field: str) -> None:
    """A mesh the URDF names: a file below the URDF's own folder, of bounded size."""
    said = f"the URDF's mesh {name[:80]!r}"
    if not name or _SCHEME.match(name) or Path(name).is_absolute():
        raise ConfigError(field, f"{said}: name meshes by a path relative to the URDF's folder ({folder})")
    target = (folder / name).resolve()
    if not target.is_relative_to(folder):
        raise ConfigError(field, f"{said} is outside the URDF's folder ({folder})")
    _regular_file(target, field, "mesh", MAX_MESH_BYTES)
