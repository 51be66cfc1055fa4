"""The learner: trains the fleet's policies from the episode store and publishes versions.

- ``learner``      the loop: when to train, what to publish, checkpoints
- ``sac``          soft actor-critic with human interventions (HIL-SERL / RLPD style)
- ``sampler``      batches with explicit ratios between kinds of data (online, intervention, demo, offline)
- ``staleness``    how much a step still counts once the policy that produced it is old
- ``distributed``  the learner under torchrun / DistributedDataParallel

May import ``cloud.data``, ``cloud.serving``, ``policies``, ``hal`` (simulators for evaluation) and ``protocol``.
"""
