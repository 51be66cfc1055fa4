"""Who may talk to the cloud, and over what.

- ``devices``  per-device credentials (robots, phones, operators): what each record allows
- ``certs``    a private CA and the cloud's server certificate (``fleetloop certs init``)
- ``exposure`` what the cloud needs before it listens (its TLS pair; beyond loopback, TLS and credentials)

May import ``protocol`` only.
"""
