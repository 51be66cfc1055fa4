"""One module per ``fleetloop`` command; each adds its own subparser (``register``) and handles it.

- ``cloud``      ``fleetloop cloud``: gateway, store, learner, phone and openpi channels
- ``edge``       ``fleetloop edge``: the edge agent for one robot
- ``learner``    ``fleetloop learner`` and the learner's flags (shared with ``cloud`` and ``fleetloop-learner``)
- ``fleet``      ``fleetloop fleet``: the live fleet and operator commands
- ``policy``     ``fleetloop policy``: list versions, roll back
- ``devices``    ``fleetloop devices``: per-device credentials
- ``certs``      ``fleetloop certs``: the CA and the cloud's certificate
- ``export``     ``fleetloop export``: store episodes -> LeRobotDataset
- ``import_``    ``fleetloop import``: LeRobotDataset -> store (``import`` is a keyword)
- ``demo``       ``fleetloop demo``: the whole loop on this machine
- ``arg_types``  argparse types several commands share (parsing only: each config checks its own fields)
- ``config_flags``  ``flag_error``: a config error named by the flag that set the field (each command's table)
- ``stopping``   SIGINT/SIGTERM -> a stop event

Part of the ``fleetloop`` room: may import ``cloud``, ``edge``, ``hal``, ``policies``, ``protocol``; holds flags and
wiring, no domain logic.
"""
