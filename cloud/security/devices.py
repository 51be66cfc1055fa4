"""Device credentials: which robots, phones and operators may talk to the cloud, as whom, and what each may do.

Each device has its own token. Only the token's sha256 is kept on disk, so the devices file
holds no secret; the token is shown once, when the device is added. The file is re-read when
it changes, so `fleetloop devices revoke` takes effect at the device's next call without a
restart of the cloud. Whether credentials are required at all is decided when the registry is
made (the cloud's start) and kept: a devices file that disappears later refuses everyone.

A robot's record binds what its hello may claim (``Device.check_robot_hello``): the datasets
(embodiments) it records into, the sources it claims, the policies it runs. A field a record
does not list (files written before these fields existed) reads as: no policies, the policies of its datasets;
no embodiments, only the datasets of the policies it lists (a dataset's policy bears its name);
no sources, either robot source (``sim`` or ``robot``). A robot record that names neither
embodiments nor policies records nowhere: its hello is refused (``record.embodiments``) until
``fleetloop devices allow`` binds it, and ``add`` does not make one (one credential that could
write every dataset is the hole these records close).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from protocol.limits import POLICY_NAME, REWARD_SUFFIX, STORE_NAME, case_twin, check_name

log = logging.getLogger("fleetloop.devices")

DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always matched whole (fullmatch)
DEVICE_KINDS = ("robot", "phone", "operator")  # an operator device may use `fleetloop fleet`
ROBOT_SOURCES = ("sim", "robot")  # the step sources (hal.resource.SOURCES) a robot may claim; "phone" is the phones'
TOKEN_PREFIX = "flt_"
_LIST_FIELDS = ("policies", "embodiments", "sources")


class AuthError(Exception):
    """A credential was refused; ``field`` names what was wrong, the message never holds a secret."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def dataset_of(policy_name: str) -> str:
    """The dataset a policy learns from: its own name (a reward classifier's without ``.reward``)."""
    return policy_name.removesuffix(REWARD_SUFFIX)


@dataclass(frozen=True)
class Device:
    id: str
    kind: str
    token_sha256: str
    policies: tuple[str, ...] = ()  # policies it may run; empty: those of its datasets (``may_run``)
    added_unix: float = 0.0
    revoked_unix: float | None = None
    embodiments: tuple[str, ...] = ()  # datasets it may record into; empty: its policies' (``datasets``)
    sources: tuple[str, ...] = ()  # sources it may claim; empty: ROBOT_SOURCES

    @property
    def revoked(self) -> bool:
        return self.revoked_unix is not None

    @property
    def datasets(self) -> tuple[str, ...]:
        """The datasets it may record into; empty: none (a record that lists neither embodiments nor policies)."""
        if self.embodiments:
            return self.embodiments
        return tuple(dict.fromkeys(dataset_of(p) for p in self.policies))

    def may_run(self, policy_name: str) -> bool:
        """A listed policy; with none listed, a policy of its own datasets (one named like a dataset, or that
        dataset's reward classifier), never another dataset's weights."""
        if self.policies:
            return policy_name in self.policies
        return dataset_of(policy_name) in self.datasets

    @property
    def runnable(self) -> str:
        """What ``may_run`` allows, in words, for refusals."""
        if self.policies:
            return ", ".join(self.policies)
        return "the policies of " + ", ".join(self.datasets) if self.datasets else "no policy"

    def check_robot_hello(self, kind: str, source: str, embodiment: str, policies: Iterable[tuple[str, str]]) -> None:
        """A tunnel hello against this record: AuthError naming the first field outside it. ``policies``: the
        (hello field, policy name) pairs it asks for."""
        if self.kind != "robot" or kind != "robot":
            why = {
                "phone": "; a phone's credential speaks only on the phone channel",
                "operator": "; an operator's credential opens no robot tunnel (it uses `fleetloop fleet` and the "
                "takeover pages)",
            }.get(self.kind, "")
            raise AuthError("hello.resource.kind", f"{self.id!r} is registered as a {self.kind}{why}")
        if not self.datasets:
            raise AuthError(
                "record.embodiments",
                f"{self.id!r} is refused: its record names no dataset it may record into (it predates bound records); "
                f"bind it on the cloud: fleetloop devices allow {self.id} --embodiment <dataset>",
            )
        sources = self.sources or ROBOT_SOURCES
        if source not in sources:
            raise AuthError("hello.resource.source", f"{self.id!r} may claim only source {', '.join(sources)}")
        for field_name, name in policies:
            if name and not self.may_run(name):
                raise AuthError(field_name, f"{self.id!r} may run only {self.runnable}")
        if embodiment not in self.datasets:
            raise AuthError(
                "hello.resource.capabilities.embodiment",
                f"{self.id!r} may record only into {', '.join(self.datasets)}",
            )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _names(values: Iterable[str], field_name: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
    """Checked names, each once, in their order; a ValueError names the field."""
    names = tuple(dict.fromkeys(values))
    for name in names:
        check_name(name, field_name, pattern, "letters, digits, '_', '.', '-' (starting with a letter or digit)")
        twin = case_twin(name, names)
        if twin is not None:
            raise ValueError(f"{field_name}: {name!r} and {twin!r} differ only in case")
    return names


def _check_bound(device: Device) -> None:
    """A record ``fleetloop devices`` writes: a robot's names the datasets it records into (files from before records
    bound datasets still load; such a robot is refused at its hello)."""
    if device.kind == "robot" and not device.datasets:
        raise ValueError(
            f"embodiment: a robot's record names the datasets it records into: give --embodiment DATASET, or --policy "
            f"POLICY (a policy's dataset bears its name), e.g. fleetloop devices add {device.id} --embodiment pusht"
        )


def _check_record(device: Device, others: Iterable[str]) -> None:
    """A record as the file holds it: a whole id, unique regardless of case, a known kind, binds of a robot only."""
    if not isinstance(device.id, str) or not DEVICE_ID.fullmatch(device.id):
        raise ValueError(f"id: {device.id!r} must be 1-64 letters, digits, '_', '.', '-'")
    twin = case_twin(device.id, others)
    if twin is not None:
        raise ValueError(
            f"id: {device.id!r} differs only in case from the device {twin!r}; ids are unique regardless of case"
        )
    if device.kind not in DEVICE_KINDS:
        raise ValueError(f"kind: must be one of {DEVICE_KINDS}, got {device.kind!r}")
    _names(device.policies, "policy", POLICY_NAME)
    _names(device.embodiments, "embodiment", STORE_NAME)
    if device.kind != "robot" and (device.embodiments or device.sources):
        raise ValueError(f"embodiment: only a robot records into datasets of its record, not a {device.kind}")
    for source in device.sources:
        if source not in ROBOT_SOURCES:
            raise ValueError(f"source: must be one of {ROBOT_SOURCES}, got {source!r}")


@dataclass
class DeviceRegistry:
    """The devices file (``<root>/devices.json``). No file when the registry is made: loopback-only open mode.

    ``required`` (None: whether the file exists now) says whether credentials are checked; it never turns off."""

    path: Path
    required: bool | None = None
    _devices: dict[str, Device] = field(default_factory=dict)
    _version: tuple[int, int, int] | None = None  # inode, mtime, size: every save is a new inode
    _gone: bool = False  # the file of a registry that requires credentials is missing: everyone is refused

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.required is None:
            self.required = self.path.exists()
        self.reload()

    @property
    def enabled(self) -> bool:
        """Whether credentials are checked: decided when the registry was made, or once it saved a device."""
        return bool(self.required)

    def reload(self) -> bool:
        """Reads the file again if it changed; returns whether it did."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return self._lost()
        version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if version == self._version:
            return False
        try:
            raw = json.loads(self.path.read_text())
            devices: dict[str, Device] = {}
            for i, entry in enumerate(raw.get("devices", [])):
                for name in _LIST_FIELDS:
                    entry[name] = tuple(entry.get(name, ()))
                device = Device(**entry)
                try:
                    _check_record(device, devices)
                except ValueError as err:
                    raise ValueError(f"devices[{i}].{err}") from None
                devices[device.id] = device
        except (OSError, ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"{self.path}: cannot read the devices file: {err}") from err
        if self._gone:
            log.warning("the devices file %s is back: devices are checked against it again", self.path)
        elif not self.required and self._version is None:
            log.warning(
                "%s appeared after the cloud started without one: no credentials are checked until it restarts",
                self.path,
            )
        self._devices, self._version, self._gone = devices, version, False
        return True

    def _lost(self) -> bool:
        """The file is missing: with credentials required, every device is refused (never an open cloud)."""
        changed = bool(self._devices) or self._version is not None
        if self.required and not self._gone:
            log.error("the devices file %s is gone: every device is refused until it is restored", self.path)
            self._gone = True
        self._devices, self._version = {}, None
        return changed

    def devices(self) -> list[Device]:
        return sorted(self._devices.values(), key=lambda d: d.id)

    def get(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def authenticate(self, device_id: str, token: str, field_prefix: str = "hello") -> Device:
        """The device, if ``token`` is its valid, unrevoked credential; AuthError otherwise."""
        self.reload()
        if not token:
            raise AuthError(f"{field_prefix}.token", f"no credential given for {device_id!r}")
        if self._gone:
            raise AuthError(f"{field_prefix}.token", "the cloud's devices file is missing: every device is refused")
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

    def add(
        self,
        device_id: str,
        kind: str = "robot",
        policies: Iterable[str] = (),
        embodiments: Iterable[str] = (),
        sources: Iterable[str] = (),
    ) -> str:
        """Adds a device and returns its token (shown once; only its hash is stored). Ids are never reused."""
        self.reload()
        device = Device(
            device_id,
            kind,
            "",
            _names(policies, "policy", POLICY_NAME),
            time.time(),
            embodiments=_names(embodiments, "embodiment", STORE_NAME),
            sources=tuple(dict.fromkeys(sources)),
        )
        existing = self._devices.get(device_id)
        if existing is not None and existing.revoked:
            raise ValueError(f"id: {device_id!r} was revoked and ids are never reused; add the device under a new id")
        if existing is not None:
            raise ValueError(f"id: {device_id!r} already has a credential (ids are never reused)")
        _check_record(device, self._devices)
        _check_bound(device)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._devices[device_id] = Device(**{**asdict(device), "token_sha256": hash_token(token)})
        self._save()
        return token

    def allow(
        self, device_id: str, policies: Iterable[str] = (), embodiments: Iterable[str] = (), sources: Iterable[str] = ()
    ) -> Device:
        """Adds policies, datasets and sources to a robot's record (its token stays): how a record from before
        records bound datasets is bound. A record that listed no policies (any) lists only these from then on."""
        self.reload()
        device = self._devices.get(device_id)
        if device is None:
            raise ValueError(f"id: no device {device_id!r}")
        if device.revoked:
            raise ValueError(f"id: {device_id!r} was revoked; add the device under a new id")
        others = {d: v for d, v in self._devices.items() if d != device_id}
        bound = replace(
            device,
            policies=_names((*device.policies, *policies), "policy", POLICY_NAME),
            embodiments=_names((*device.embodiments, *embodiments), "embodiment", STORE_NAME),
            sources=tuple(dict.fromkeys((*device.sources, *sources))),
        )
        _check_record(bound, others)
        _check_bound(bound)
        self._devices[device_id] = bound
        self._save()
        return bound

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
        payload = {"devices": [{**asdict(d), **{n: list(getattr(d, n)) for n in _LIST_FIELDS}} for d in self.devices()]}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._version = None  # read back at the next call
        self.required = True  # it holds credentials now: they are checked from here on
