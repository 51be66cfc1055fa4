"""Device credentials: which robots, phones and operators may talk to the cloud, and as whom.

Each device has its own token. Only the token's sha256 is kept on disk, so the devices file
holds no secret; the token is shown once, when the device is added. The file is re-read when
it changes, so `fleetloop devices revoke` takes effect at the device's next call without a
restart of the cloud.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEVICE_KINDS = ("robot", "phone", "operator")  # an operator device may use `fleetloop fleet`
TOKEN_PREFIX = "flt_"


class AuthError(Exception):
    """A credential was refused; ``field`` names what was wrong, the message never holds a secret."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Device:
    id: str
    kind: str
    token_sha256: str
    policies: tuple[str, ...] = ()  # policies it may run; empty: any
    added_unix: float = 0.0
    revoked_unix: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_unix is not None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class DeviceRegistry:
    """The devices file (``<root>/devices.json``). An absent file means no registry: loopback-only open mode."""

    path: Path
    _devices: dict[str, Device] = field(default_factory=dict)
    _version: tuple[int, int, int] | None = None  # inode, mtime, size: every save is a new inode

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.reload()

    @property
    def enabled(self) -> bool:
        return self.path.exists()

    def reload(self) -> bool:
        """Reads the file again if it changed; returns whether it did."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            changed = bool(self._devices)
            self._devices, self._version = {}, None
            return changed
        version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if version == self._version:
            return False
        try:
            raw = json.loads(self.path.read_text())
            devices = {}
            for i, entry in enumerate(raw.get("devices", [])):
                entry["policies"] = tuple(entry.get("policies", ()))
                device = Device(**entry)
                if not DEVICE_ID.match(device.id):
                    raise ValueError(f"devices[{i}].id: {device.id!r} is not a valid device id")
                devices[device.id] = device
        except (OSError, ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"{self.path}: cannot read the devices file: {err}") from err
        self._devices, self._version = devices, version
        return True

    def devices(self) -> list[Device]:
        return sorted(self._devices.values(), key=lambda d: d.id)

    def get(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def authenticate(self, device_id: str, token: str, field_prefix: str = "hello") -> Device:
        """The device, if ``token`` is its valid, unrevoked credential; AuthError otherwise."""
        self.reload()
        if not token:
            raise AuthError(f"{field_prefix}.token", f"no credential given for {device_id!r}")
        device = self._devices.get(device_id)
        # Compare against a hash even for unknown ids, so timing does not tell which ids exist.
        expected = device.token_sha256 if device else hash_token(secrets.token_hex(16))
        if not hmac.compare_digest(expected, hash_token(token)) or device is None:
            raise AuthError(f"{field_prefix}.token", f"wrong credential for {device_id!r}")
        if device.revoked:
            raise AuthError(f"{field_prefix}.token", f"the credential of {device_id!r} was revoked")
        return device

    def identify(self, token: str) -> Device | None:
        """The unrevoked device whose token this is (for calls that carry no device id)."""
        self.reload()
        digest = hash_token(token)
        for device in self._devices.values():
            if hmac.compare_digest(device.token_sha256, digest) and not device.revoked:
                return device
        return None

    # ---- what `fleetloop devices` does ------------------------------------------------------------------------

    def add(self, device_id: str, kind: str = "robot", policies: tuple[str, ...] = ()) -> str:
        """Adds a device and returns its token (shown once; only its hash is stored)."""
        if not DEVICE_ID.match(device_id):
            raise ValueError(f"id: {device_id!r} must be 1-64 letters, digits, '_', '.', '-'")
        if kind not in DEVICE_KINDS:
            raise ValueError(f"kind: must be one of {DEVICE_KINDS}, got {kind!r}")
        self.reload()
        existing = self._devices.get(device_id)
        if existing is not None and not existing.revoked:
            raise ValueError(f"id: {device_id!r} already has a credential (revoke it first to issue a new one)")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._devices[device_id] = Device(device_id, kind, hash_token(token), tuple(policies), time.time())
        self._save()
        return token

    def revoke(self, device_id: str) -> Device:
        self.reload()
        device = self._devices.get(device_id)
        if device is None:
            raise ValueError(f"id: no device {device_id!r}")
        if not device.revoked:
            device = Device(**{**asdict(device), "revoked_unix": time.time()})
            self._devices[device_id] = device
            self._save()
        return device

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        payload = {"devices": [{**asdict(d), "policies": list(d.policies)} for d in self.devices()]}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._version = None  # read back at the next call
