"""The learner: trains the fleet's policies from the episode store and publishes versions.

- ``learner``      the loop: when to train, what to publish
- ``config``       ``LearnerConfig``, checked whole when it is built
- ``checkpoint``   each dataset's saved learner state (safetensors + JSON) and how it loads
- ``algorithms/``  how a round trains, behind one ``Algorithm`` interface: HG-DAgger (warm-started, training
                   between rounds, optionally LoRA adapters only) and SAC with interventions
- ``policy_choice`` which policy a dataset gets (MLP, CNN or a lerobot type) from its schema and the config
- ``sampler``      batches with explicit ratios between kinds of data (online, intervention, demo, offline)
- ``staleness``    how much a step still counts once the policy that produced it is old
- ``distributed``  the learner under torchrun / DistributedDataParallel

May import ``cloud.data``, ``cloud.serving``, ``policies``, ``hal`` (simulators for evaluation) and ``protocol``.
"""
