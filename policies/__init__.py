"""Policies: the interface, the implementations, and their weights on disk and on the wire.

- ``base``            the ``Policy`` interface the edge and the learner use
- ``mlp``, ``cnn``    small built-in policies; ``sac_actor`` the SAC actor; ``lora`` adapters around any policy
- ``lerobot_policy``  any lerobot policy (ACT, diffusion, SmolVLA, pi0) behind the same interface
- ``lerobot_processors`` which lerobot processor steps a pipeline config arriving as data may name
- ``lerobot_trust``   a lerobot policy config from data checked against allow-lists before anything is built
- ``signing``         versions signed by the learner's ed25519 key, and checked before anything past the header
- ``spec``            a robot's observations and action size, and whether a policy fits them (errors name the feature)
- ``pretrained_dir``  a lerobot ``pretrained_model`` folder or a weights file as a policy, checked as hostile input
- ``pretrained_checks`` each file of a ``pretrained_model`` folder checked before anything in it is built
- ``model_roots``     the folders a config from data may name a model in (``--model-root``)
- ``lerobot_config``  lerobot config names read in several places, and decoding a config from its JSON
- ``reward_classifier`` lerobot's reward classifier as a policy type (camera frames in, P(success) out)
- ``tensor_view``     safetensors bytes read in place, and many tensors' digests hashed at once
- ``factory``         policy types by name: safetensors metadata back into a policy
- ``weights``         policy <-> safetensors bytes (never pickle)
- ``updates``         snapshots and deltas on the wire
- ``train``           a plain behaviour-cloning loop

May import ``hal`` (resource specs) and ``protocol``.
"""
