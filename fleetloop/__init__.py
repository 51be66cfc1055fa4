"""The ``fleetloop`` command line: parses flags, builds the parts from ``cloud``, ``edge`` and ``hal``, runs them.

- ``cli``         the ``fleetloop`` parser and ``main``
- ``commands``    one module per command: its flags and its handler
- ``distributed_learner``  ``fleetloop-learner``: the learner alone, under ``torchrun`` too
- ``demo``        ``fleetloop demo``: the whole loop on one machine with a live table
- ``fleet_view``  ``fleetloop fleet``: the live fleet table and operator commands
- ``summary``     how autonomy grew across policy versions, from the store
- ``table_console``  the console tables print on (wide when piped)
- ``logs``        log lines an operator can read

The top layer: may import every package; nothing imports it.
"""
