"""Who may talk to the cloud, and over what.

- ``devices``  per-device credentials (robots, phones, operators): what each record allows
- ``certs``    a private CA and the cloud's server certificate (``fleetloop certs init``)

Imports nothing of fleetloop.
"""
