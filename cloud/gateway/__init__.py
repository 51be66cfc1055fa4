"""The gateway: the server end of every edge's tunnel, one module per job.

- ``config``            what a gateway is told at start (``GatewayConfig``) and its gRPC options
- ``sessions``          one edge's tunnel (``Session``), the hello's checks, device credentials and revocation
- ``ingest``            incoming step batches: validation, group commit into the ingest log (``StoreWriter``), acks
- ``compactor``         acked batches from the ingest log into the episode store, off the ack path
- ``cameras``           the codec each dataset keeps its cameras in, checks of encoded frames, encoding into it
- ``push``              registry watch, delta or snapshot building, sending policy versions down the tunnels
- ``snapshot_stream``   a full snapshot's pieces cut as its file is read (or written), shared by every edge
- ``lru_cache``         the bounded cache push keeps weights, wire states and built updates in
- ``person_relay``      the people at robots' takeover pages: their commands down, live views and refusals back
- ``remote_inference``  edges whose policy runs in the cloud: observations in, action chunks out
- ``control``           the fleet control service (``fleetloop fleet``): the fleet's state, operator commands
- ``fleet``             the fleet scheduler: every resource online, its state and task
- ``tasks``             the tasks file (which policy runs where) as typed config
- ``bounds``            what one device can make the gateway do: decoding off the event loop, stream caps
- ``malloc``            glibc's malloc told to reuse freed message buffers (fewer fresh pages per camera batch)
- ``internal_errors``   an unexpected failure of a call reaches its client as an incident id, not a traceback
- ``server``            the ``Gateway`` that wires these into one gRPC service, and ``serve``, which runs
                        ``Service``s beside it (the phone channel, the openpi endpoint)

May import ``cloud.data``, ``cloud.security``, ``cloud.serving``, ``policies``, ``hal`` and ``protocol``.
"""
