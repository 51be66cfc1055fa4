"""Data at rest: what the fleet recorded and what the learner published.

- ``layout``           the cloud's data folder (``--root``): where the store, registry, credentials, certificates
                       and the learner's checkpoint live in it
- ``store``            the episode store: steps of every episode as zarr v3 arrays, committed in batches
- ``partitions``       several gateways on one store: a partition each (``@parts/<gateway-id>``), found and read
- ``shared_partition`` a gateway's store beside others: writes its partition, continues episodes others began
- ``store_union``      every partition read as one store (the learner, export, ``policy``)
- ``store_views``      what a reader asks of datasets and episodes, alike for one store and for the union
- ``blobs``            where the store's and the registry's bytes go: a local folder or ``s3://`` (obstore)
- ``writer_hold``      the store's one writer: a flock on a folder, a lease object on object storage
- ``ingest_log``       the gateway's append-only log of acked batches (fsync'd per group), replayed on start
- ``labels``           a person's verdict on an episode, beside its dataset; ``operators`` who drove which steps
- ``columns``          the store's column schema (raw or encoded camera) and how a column's zarr array is made
- ``video_columns``    encoded camera columns in the store: packets in, decoded frames (or the packets) out
- ``episodes``         an episode's provenance and the statistics folded from its rows
- ``version_registry`` monotonic versions of each policy as safetensors files
- ``learner_key``      the learner's signing key (kept apart from what the gateway reads) and registries that sign
                       or verify with it
- ``policy_import``    a lab's lerobot ``pretrained_model`` folder or weights file, checked against a robot's spec and
                       published as a version; which versions came from outside the learner
- ``files``            files readers see whole or not at all (write, fsync, rename)
- ``lerobot_export``   episodes out as a LeRobotDataset v3
- ``lerobot_import``   a LeRobotDataset in as offline demonstrations
- ``lerobot_progress`` the bar both directions show, with ``datasets``' own bars off meanwhile
- ``lerobot_video``    H.264/AV1 cameras between store packets and LeRobotDataset MP4s, remuxed (no decode/encode)

May import ``protocol`` and ``policies``; no other room of the cloud.
"""
