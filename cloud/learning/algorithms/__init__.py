"""How a learner round trains: one ``Algorithm`` interface, one module per algorithm.

- ``base``       the ``Algorithm`` interface: its kinds of steps, its state from a checkpoint, a round, what it saves
- ``hg_dagger``  HG-DAgger: a fresh policy each round on every step a person labelled
- ``sac``        SAC with interventions: the agent carries on from round to round over online and demonstration data
- ``sac_agent``  the SAC agent itself (actor, twin critics, temperature, one update) and ``SACConfig``

``cloud.learning.learner`` picks one by name from the config. May import what ``cloud.learning`` may.
"""
