"""The peer beside (a): lerobot's own actor -> learner transition uplink, through its own code, on loopback.

The learner side is lerobot's ``start_learner`` (its ``LearnerService`` on a sync gRPC server; ``SendTransitions``
runs ``receive_bytes_in_chunks`` into the transition queue), with the bench process draining that queue through
``bytes_to_transitions`` (``torch.load(weights_only=True)``), as its ``add_actor_information_and_train`` does. The
actor side, in a child process, is its ``push_transitions_to_transport_queue`` (``torch.save`` of a list of
transitions: pickle-based, no schema) and ``send_transitions`` (``send_bytes_in_chunks``, 2 MB chunks, over
``SendTransitions``). Each transition carries a 96x96 uint8 image, as bench (a) sends, in both ``state`` and
``next_state`` (lerobot's format); 20 transitions per message, as bench (a) batches steps.

The baseline is bench (a)'s: the same steps as fleetloop StepBatch bytes over raw gRPC (bench/raw.py), same run.
Differences kept as lerobot has them: no acks, nothing durable, no checks of what arrives.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import HIGHER, SPAWN, Children, LoopThread, Result, child_setup, free_port, report_error
from bench.lerobot_push import _config
from bench.uplink import IMAGE_SHAPE, _run

BATCH_STEPS = 20


def _transitions(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` lerobot transitions of a 96x96 camera and an 8-d state, as its actor collects them."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    height, width, channels = IMAGE_SHAPE
    out = []
    for _ in range(count):
        image = torch.randint(0, 256, (1, channels, height, width), dtype=torch.uint8, generator=generator)
        state = {"observation.image": image, "observation.state": torch.zeros(1, 8)}
        out.append(
            {
                "state": state,
                "action": torch.zeros(1, 4),
                "reward": 0.0,
                "next_state": {k: v.clone() for k, v in state.items()},
                "done": False,
                "truncated": False,
                "complementary_info": None,
            }
        )
    return out


def actor_main(port: int, steps: int, messages: Any, start: Any, stop: Any) -> None:
    """lerobot's actor side: transitions pushed to its transport queue, sent by its send_transitions thread."""
    child_setup()
    try:
        from lerobot.rl.actor import push_transitions_to_transport_queue, send_transitions

        batches = [_transitions(min(BATCH_STEPS, steps - first), first) for first in range(0, steps, BATCH_STEPS)]
        outgoing: queue.Queue = queue.Queue()
        shutdown = threading.Event()
        messages.put({"kind": "ready", "who": "lerobot-actor"})
        if not start.wait(120):
            raise TimeoutError("no start signal")
        sender = threading.Thread(target=send_transitions, args=(_config(port), outgoing, shutdown), daemon=True)
        sender.start()
        for batch in batches:  # serialising is the actor's cost, as in its loop
            push_transitions_to_transport_queue(batch, outgoing)
        stop.wait(300)
        shutdown.set()
        sender.join(10)
    except Exception:
        report_error(messages, "lerobot-actor")


def _lerobot_run(steps: int) -> tuple[float, int]:
    """Seconds from the start signal until the learner has deserialised ``steps`` transitions; bytes received."""
    from lerobot.rl.learner import start_learner
    from lerobot.transport.utils import bytes_to_transitions

    port = free_port()
    transitions: queue.Queue = queue.Queue()
    shutdown = threading.Event()
    learner = threading.Thread(
        target=start_learner, args=(queue.Queue(), transitions, queue.Queue(), shutdown, _config(port)), daemon=True
    )
    learner.start()
    try:
        with Children() as children:
            start, stop = SPAWN.Event(), SPAWN.Event()
            children.start(actor_main, port, steps, children.messages, start, stop, name="lerobot-actor")
            children.receive("ready", 1, timeout_s=180)
            started = time.monotonic()
            start.set()
            received = wire = 0
            deadline = started + 300
            while received < steps:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"lerobot's learner received {received} of {steps} transitions")
                try:
                    data = transitions.get(timeout=0.5)
                except queue.Empty:
                    children.poll("error", 0.01)  # raises if the actor failed
                    continue
                wire += len(data)
                received += len(bytes_to_transitions(data))
            seconds = time.monotonic() - started
            stop.set()
            children.join(15)
    finally:
        shutdown.set()
        learner.join(15)
    return seconds, wire


def measure(loop: LoopThread, workdir: Path, steps: int = 2400, say: Callable[[str], None] = print) -> list[Result]:
    say(f"lerobot-uplink: {steps} image transitions through lerobot's actor -> learner transport")
    try:
        seconds, wire = _lerobot_run(steps)
    except (ImportError, RuntimeError, TimeoutError) as err:
        say(f"  lerobot's transport cannot run here: {err}")
        return []
    say("lerobot-uplink: the same steps as fleetloop StepBatch bytes over raw gRPC (bench (a)'s baseline)")
    raw = _run("raw", loop, workdir / "lerobot-uplink-raw", 1, steps, BATCH_STEPS)
    steps_s, raw_steps_s = steps / seconds, raw.steps / raw.seconds
    mb_s, raw_mb_s = wire / 1e6 / seconds, raw.wire_bytes / 1e6 / raw.seconds
    say(f"  lerobot {steps_s:,.0f} steps/s ({mb_s:,.0f} MB/s), raw {raw_steps_s:,.0f} steps/s ({raw_mb_s:,.0f} MB/s)")
    note = (
        f"{HIGHER}; lerobot 0.6.1 SendTransitions, torch.save (pickle) of 20 transitions per message, "
        "image in state and next_state, not acked or stored"
    )
    return [
        Result("lerobot uplink 1 edge: steps/s (vs raw gRPC)", steps_s, "steps/s", raw_steps_s, note),
        Result("lerobot uplink 1 edge: MB/s (vs raw gRPC)", mb_s, "MB/s", raw_mb_s, note),
    ]
