"""The cloud: where every edge's tunnel ends, the fleet's data rests and the shared policies learn.

Rooms, one concept each (each ``__init__`` says what it may import):

- ``cloud.data``      the episode store (zarr), the registry of published policy versions, LeRobotDataset export/import
- ``cloud.security``  device credentials and certificates
- ``cloud.serving``   policies run in the cloud: batched remote inference, phone foresight
- ``cloud.learning``  the learner loop, its algorithms, the sampler and staleness budget, torchrun/DDP
- ``cloud.gateway``   the tunnel server: sessions, ingest, pushes, the fleet scheduler
- ``cloud.channels``  other doors into the cloud: the phone channel and page, the openpi endpoint

Layers inside the cloud run downwards in this order: ``data`` and ``security`` import nothing of the cloud;
``serving`` and ``learning`` import ``data``; ``gateway`` imports all of those; ``channels`` may import the gateway.
Everything may import ``protocol``, ``hal`` and ``policies``; nothing here imports ``edge`` or ``fleetloop``.
"""
