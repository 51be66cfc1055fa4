"""The wire contract both sides speak: the tunnel's messages and the array codec."""

PROTOCOL_VERSION = 1
