"""The edge agent: runs on (or beside) a robot.

- ``agent``           the fixed-rate control loop, wired to a runtime, an operator and the tunnel
- ``runtime``         the ``PolicyRuntime`` interface the control loop depends on
- ``local_runtime``   local inference and weight loading off the control thread, swaps between ticks
- ``remote_runtime``  the same interface with the policy in the cloud
- ``operator``        simulated operators: a scripted expert and HG-DAgger's person who takes over
- ``teleop_operator`` a person at the robot: a lerobot teleoperator or the keys (``keys``), their action mapped
                      onto the robot's (``action_map``; end-effector deltas onto joints: ``kinematics``)
- ``remote_operator`` the takeover page's people; ``arbiter`` one controller at a time; ``live_view`` what they see
- ``scene``           the wait between two episodes for a scene a person resets
- ``outcome``         a reward classifier's verdict on an episode (P(success) above a threshold N frames in a row)
- ``outcome_worker``  that verdict computed off the control thread, from the classifier the cloud pushes
- ``recorder``        records steps on the control thread and spools them from another
- ``spool``           the durable spool: steps wait on disk until the cloud acks them
- ``camera_uplink``   the codec each camera travels in (``--uplink-codec``), encoded on the spool writer's thread
- ``backlog``         tells the operator when the link is slower than the robot, and when the backlog drained
- ``tunnel_client``   the edge-initiated gRPC stream, reopened with backoff
- ``learner_key``     the learner's public key a version's signature is checked with

May import ``hal``, ``policies`` and ``protocol``; never ``cloud``.
"""
