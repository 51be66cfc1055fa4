"""(e) LoRA updates: bytes and publish -> applied time of a delta update vs a full-weights push, same run.

One EdgeAgent process (NullRobot, 30 Hz) runs a LoRA-adapted MLP. A "delta" push publishes the same model
with only its adapters fine-tuned, so the gateway sends the changed tensors; a "full" push publishes a
model with a new base (every tensor changed), so the gateway sends a snapshot. Both are timed from
``registry.publish`` to the edge's "applied" report, and the bytes are the size of the update the edge
received (its ``PolicyApplied.received_bytes``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench.agents import agent_main
from bench.common import LOWER, SPAWN, Children, GatewayHarness, LoopThread, Result, median

POLICY = "bench-delta"
OBSERVATION = {"state": {"shape": [21], "dtype": "float32"}}  # NullRobot's state; its action has 4 dims


def _lora(hidden: list[int], seed: int):
    import torch

    from policies.lora import LoraConfig, LoraPolicy

    torch.manual_seed(seed)
    base = {"observation": OBSERVATION, "action_dim": 4, "chunk_size": 1, "hidden": hidden}
    return LoraPolicy(LoraConfig(base_type="mlp", base_config=base, rank=8))


def _fine_tune(policy, seed: int) -> None:
    import numpy as np

    from policies.train import train_policy

    rng = np.random.default_rng(seed)
    state = rng.normal(size=(512, 21)).astype(np.float32)
    batch = {"obs.state": state, "action": np.tanh(state[:, :4]).astype(np.float32)}
    train_policy(policy, batch, steps=5, batch_size=64, seed=seed, fit_normalization=False)


def measure(
    loop: LoopThread, workdir: Path, hidden: list[int], repeats: int = 2, say: Callable[[str], None] = print
) -> list[Result]:
    from policies.weights import policy_to_bytes

    policy = _lora(hidden, seed=0)
    params = sum(p.numel() for p in policy.parameters())
    adapters = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    say(
        f"LoRA updates: MLP {hidden} with rank-8 adapters, {params / 1e6:.2f}M parameters ({adapters / 1e3:.0f}k train)"
    )
    received: dict[int, int] = {}
    times: dict[str, list[float]] = {"delta": [], "full": []}
    sizes: dict[str, list[int]] = {"delta": [], "full": []}
    with Children() as children, GatewayHarness(loop, workdir / "delta") as gateway:
        gateway.gateway.on_applied.append(
            lambda who, message: received.__setitem__(message.version, message.received_bytes)
        )
        stop = SPAWN.Event()
        spool = str(workdir / "delta" / "spool.db")
        children.start(
            agent_main,
            "bench-delta-0",
            gateway.target,
            spool,
            POLICY,
            30.0,
            0.0,
            False,
            children.messages,
            stop,
            name="bench-delta-0",
        )
        children.receive("started", 1, timeout_s=180)
        gateway.wait_sessions(1, timeout_s=60)

        def push(blob: bytes, kind: str | None) -> None:
            started = time.monotonic()
            version = gateway.registry.publish(POLICY, blob).version
            applied = gateway.wait_applied(POLICY, version, 1, timeout_s=300)
            if kind is not None:
                times[kind].append(max(applied.values()) - started)
                sizes[kind].append(received[version])

        push(policy_to_bytes(policy), None)  # the edge starts from a snapshot of the first model
        for i in range(repeats):
            _fine_tune(policy, seed=i)
            push(policy_to_bytes(policy), "delta")
            policy = _lora(hidden, seed=100 + i)  # a new base: every tensor differs
            push(policy_to_bytes(policy), "full")
        stop.set()
        children.receive("stats", 1, timeout_s=60)
        children.join(10)
    say(f"  delta: {sizes['delta']} bytes in {' '.join(f'{t:.3f}' for t in times['delta'])} s")
    say(f"  full:  {sizes['full']} bytes in {' '.join(f'{t:.3f}' for t in times['full'])} s")
    label = f"{params / 1e6:.1f}M params"
    measures = (
        ("bytes sent", sizes, "B", "only adapters and normalization changed"),
        ("publish -> applied", times, "s", "1 edge"),
    )
    return [
        Result(
            f"LoRA update, {label}: {what} as a delta (vs a full-weights push)",
            median(values["delta"]),
            unit,
            median(values["full"]),
            f"{LOWER}; median of {repeats}; {note}",
        )
        for what, values, unit, note in measures
    ]
