"""Who may talk to the cloud, and over what.

- ``devices``  per-device credentials (robots, phones, operators): what each record allows
- ``certs``    a private CA and the cloud's server certificate (``fleetloop certs init``)
- ``exposure`` what the cloud needs before it listens (its TLS pair; beyond loopback, TLS and credentials)
- ``revocation`` every live connection checked by id against its record: a revoked one closes within 0.1 s

May import ``protocol`` only.
"""
