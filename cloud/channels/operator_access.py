"""Who may use the cloud's operator pages (a robot's takeover page, the dashboard): an operator device proves itself
with its token in the page's hello; one whose record lists policies reaches only the robots running one of them."""

from __future__ import annotations

from cloud.channels.phone_messages import PhoneError
from cloud.gateway.server import Gateway
from cloud.security.devices import AuthError, Device
from cloud.security.revocation import still_valid


class OperatorAccess:
    """The operator checks of one gateway's pages, against its device registry (reloaded, so revocations count)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def operator(self, name: str, token: str) -> Device:
        """The operator device ``name`` whose token this is; PhoneError/AuthError naming the hello's field."""
        devices = self.gateway.config.devices
        if devices is None or not devices.enabled:
            raise PhoneError(
                "hello.operator",
                "this cloud has no operator credentials: add one with `fleetloop devices add NAME --kind operator`",
            )
        device = devices.authenticate(name, token)
        if device.kind != "operator":
            raise AuthError("hello.operator", f"{name!r} is registered as a {device.kind}, not an operator")
        return device

    def check_current(self, device: Device) -> None:
        """AuthError when the operator's credential was revoked (or replaced) since its page signed in."""
        devices = self.gateway.config.devices
        if devices is not None:
            try:
                devices.reload()
            except ValueError:  # a broken devices file: the last good one stands (the gateway says so)
                pass
        if devices is None or not still_valid(devices, device):  # the same test CredentialWatch applies
            raise AuthError("hello.token", f"the credential of {device.id!r} was revoked")

    def reaches(self, device: Device, robot_id: str) -> bool:
        """Whether the operator may see and command the robot: every robot, or those running one of its policies."""
        if not device.policies:
            return True
        session = self.gateway.persons.session(robot_id)
        return session is not None and session.policy_name in device.policies

    def check_reach(self, device: Device, robot_id: str) -> None:
        """AuthError unless ``reaches``."""
        if self.reaches(device, robot_id):
            return
        session = self.gateway.persons.session(robot_id)
        runs = f"runs {session.policy_name or 'no policy'}" if session is not None else "is not connected"
        raise AuthError(
            "hello.operator",
            f"{device.id!r} may reach only robots running {', '.join(device.policies)}; {robot_id} {runs}",
        )
