"""The ``fleetloop`` command line: parses flags, builds the parts from ``cloud``, ``edge`` and ``hal``, runs them.

- ``cli``         the commands and their flags
- ``demo``        ``fleetloop demo``: the whole loop on one machine with a live table
- ``fleet_view``  ``fleetloop fleet``: the live fleet table and operator commands
- ``summary``     how autonomy grew across policy versions, from the store
- ``logs``        log lines an operator can read

The top layer: may import every package; nothing imports it.
"""
