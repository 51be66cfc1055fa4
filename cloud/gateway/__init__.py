"""The gateway: the server end of every edge's tunnel.

- ``server``  the tunnel service: sessions, ingest into the store, policy pushes, remote inference
- ``fleet``   the fleet scheduler: every resource online, its state and task
- ``tasks``   the tasks file (which policy runs where) as typed config

May import ``cloud.data``, ``cloud.security``, ``cloud.serving``, ``policies``, ``hal`` and ``protocol``.
"""
