"""The peer beside (b): lerobot's own learner -> actor weight push, through its own code, on loopback.

The learner side is lerobot's ``start_learner`` (its ``LearnerService`` on a sync gRPC server, 4 MB messages) fed by
``push_actor_policy_to_queue`` (``torch.save`` of the state dict); the actor side, in a child process, is its
``receive_policy`` (``receive_bytes_in_chunks`` over ``StreamParameters``, 2 MB chunks) and
``update_policy_parameters`` (``torch.load(weights_only=True)``, then the weights loaded into a built policy).
Timed from the learner's push to the actor's load, for the same MLP as fleetloop's 50M row. Differences kept as
lerobot has them: no digest, no signature, nothing written to disk. ``seconds_between_pushes`` is 0 (lerobot's
default waits seconds between pushes, which would only add waiting).
"""

from __future__ import annotations

import queue
import threading
import time
from types import SimpleNamespace
from typing import Any

from bench.common import SPAWN, Children, child_setup, free_port, report_error


def _config(port: int) -> Any:
    """The fields of lerobot's TrainRLServerPipelineConfig that its transport functions read."""
    actor_learner = SimpleNamespace(
        learner_host="127.0.0.1", learner_port=port, policy_parameters_push_frequency=0, queue_get_timeout=0.001
    )
    concurrency = SimpleNamespace(actor="threads", learner="threads")
    return SimpleNamespace(policy=SimpleNamespace(actor_learner_config=actor_learner, concurrency=concurrency))


def _policy(hidden: list[int]) -> Any:
    from bench.push import OBSERVATION
    from policies.factory import make_policy

    return make_policy("mlp", {"observation": OBSERVATION, "action_dim": 4, "chunk_size": 1, "hidden": hidden})


def actor_main(port: int, hidden: list[int], messages: Any, stop: Any) -> None:
    """lerobot's actor side: receive_policy on a thread; update_policy_parameters polled, as its loop does."""
    child_setup()
    try:
        import torch
        from lerobot.rl.actor import receive_policy, update_policy_parameters

        torch.set_num_threads(1)
        policy = _policy(hidden)

        def load_weights(state_dicts: dict[str, Any], device: Any) -> None:
            policy.load_state_dict(state_dicts["policy"])
            messages.put({"kind": "loaded", "at": time.monotonic()})

        algorithm = SimpleNamespace(load_weights=load_weights)
        parameters: queue.Queue = queue.Queue()
        shutdown = threading.Event()
        threading.Thread(target=receive_policy, args=(_config(port), parameters, shutdown), daemon=True).start()
        messages.put({"kind": "started", "who": "lerobot-actor"})
        while not stop.is_set():
            update_policy_parameters(algorithm, parameters, "cpu")
            time.sleep(0.001)
        shutdown.set()
    except Exception:
        report_error(messages, "lerobot-actor")


def measure(hidden: list[int], repeats: int) -> list[float]:
    """Seconds from the learner's push to the actor's load, ``repeats`` times (after one untimed warm-up)."""
    from lerobot.rl.learner import push_actor_policy_to_queue, start_learner

    port = free_port()
    policy = _policy(hidden)
    algorithm = SimpleNamespace(get_weights=lambda: {"policy": policy.state_dict()})
    parameters: queue.Queue = queue.Queue()
    shutdown = threading.Event()
    learner = threading.Thread(
        target=start_learner, args=(parameters, queue.Queue(), queue.Queue(), shutdown, _config(port)), daemon=True
    )
    learner.start()
    times: list[float] = []
    try:
        with Children() as children:
            stop = SPAWN.Event()
            children.start(actor_main, port, hidden, children.messages, stop, name="lerobot-actor")
            children.receive("started", 1, timeout_s=180)
            for attempt in range(repeats + 1):
                started = time.monotonic()
                push_actor_policy_to_queue(parameters, algorithm)
                loaded = children.receive("loaded", 1, timeout_s=300)[0]["at"]
                if attempt:
                    times.append(loaded - started)
            stop.set()
            children.join(10)
    finally:
        shutdown.set()
        learner.join(15)
    return times
