"""(o) Remote inference: what the cloud adds to a policy's forward pass, and what continuous batching buys.

The real gateway (its shared InferenceServer, one torch thread a pass: it shares 2 cores with the clients) and the
openpi endpoint run on the bench's loop thread; clients are child processes on loopback. Three policies are
published: ``panda`` (the demo's 21-in, 4-out MLP) for one client's round trips; for throughput ``wide`` (an MLP of
8 layers of 1024) and ``diffusion`` (lerobot's diffusion policy on the same state: a 1-D UNet of 128-256 channels
run for 10 DDIM steps, the kind of policy an edge hands to the cloud).

- One client, one request at a time: request -> reply through the edge's own TunnelClient (gRPC tunnel, remote
  inference on) and through the real openpi client (``openpi_client.WebsocketClientPolicy``). Baseline: the model
  time, the forward pass alone (``act_batch`` of one observation) of the same weights on the same observation, in
  this process. Overhead = p50 round trip - p50 model time; the issue's floor: 1 ms.
- Eight clients, each with one request in flight, for a few seconds, per throughput policy: replies/s with the
  gateway's batching (max_batch 16) vs the same clients and model with max_batch 1, measured alternately in the
  same run; each phase also says the CPU a reply cost in the clients and in the server, which bounds what batching
  can buy when all of them share 2 cores.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import HIGHER, LOWER, SPAWN, Children, GatewayHarness, LoopThread, Result, child_setup, report_error

STATE = 21
SMALL, WIDE, DIFFUSION = "panda", "wide", "diffusion"
CLIENTS = 8
# The server's torch threads a pass (GatewayConfig.inference_threads): its 2 cores are shared with 8 clients and the
# event loop, and torch's default (one a core) spins a batched pass's second thread against them.
INFERENCE_THREADS = 1
# Batching pays where a pass of 8 costs little more than a pass of 1; on a CPU that holds for no matrix work (a
# pass of 8 costs 2-3 passes of 1 for MLPs here, ~10x for 4096-wide layers on a loaded machine): this is the best seen.
WIDE_HIDDEN = [1024] * 8
# A small state-based Diffusion Policy: its pass is 10 UNet passes of small tensors, whose cost is mostly per
# operation, so 8 observations cost about twice one.
DIFFUSION_CONFIG = {
    "n_obs_steps": 2,
    "horizon": 16,
    "n_action_steps": 8,
    "down_dims": [128, 256],
    "kernel_size": 5,
    "n_groups": 8,
    "diffusion_step_embed_dim": 128,
    "pretrained_backbone_weights": None,
    "num_train_timesteps": 100,
    "num_inference_steps": 10,
    "noise_scheduler_type": "DDIM",
}
THROUGHPUT = {  # policy -> what the rows call it
    WIDE: "MLP 8x1024",
    DIFFUSION: "diffusion policy (lerobot, UNet 128-256, 10 DDIM steps)",
}
WARMUP = 20
GOAL_OVERHEAD_MS = 1.0
GOAL_SPEEDUP = 3.0


def _state(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(STATE).astype(np.float32)


def tunnel_client_main(target: str, who: str, policy: str, spool: str, plan: list, messages, go) -> None:
    """An edge whose policy runs in the cloud: one request in flight; per phase of ``plan`` (kind, amount), after
    its go signal: "count" n round trips, timed each, or "seconds" s of requests, counted."""
    child_setup()
    try:
        from edge.segment_spool import open_spool
        from edge.tunnel_client import TunnelClient, TunnelConfig
        from hal.resource import ArraySpec, Capabilities, ResourceInfo
        from protocol import tunnel_pb2 as pb
        from protocol.arrays import encode_array

        answered = threading.Event()
        caps = Capabilities(
            (ArraySpec("state", "float32", (STATE,)),), ArraySpec("action", "float32", (4,)), 10.0, policy
        )
        config = TunnelConfig(target, policy, remote_inference=True)
        tunnel = TunnelClient(
            config,
            ResourceInfo(who, "robot", caps, "sim"),
            open_spool(Path(spool)),
            on_policy=lambda *_: None,
            on_actions=lambda reply: answered.set(),
        )
        tunnel.start()
        if not tunnel.connected.wait(30):
            raise TimeoutError(f"{who}: no tunnel to {target}: {tunnel.refused or tunnel.errors}")
        request = pb.InferenceRequest()
        request.observation["state"].CopyFrom(encode_array(_state(0)))

        def ask() -> None:
            answered.clear()
            request.request_id += 1
            if not tunnel.send_infer(request) or not answered.wait(10):
                raise TimeoutError(f"{who}: no reply to request {request.request_id}")

        _run_plan(who, plan, ask, messages, go)
        tunnel.stop()
    except Exception:
        report_error(messages, who)


def openpi_client_main(url: str, who: str, plan: list, messages, go) -> None:
    """The real openpi client (openpi_client.WebsocketClientPolicy) driving the policy at ``url``."""
    child_setup()
    try:
        from openpi_client.websocket_client_policy import WebsocketClientPolicy

        client = WebsocketClientPolicy(url)
        observation = {"state": _state(0)}
        _run_plan(who, plan, lambda: client.infer(observation), messages, go)
    except Exception:
        report_error(messages, who)


def _run_plan(who: str, plan: list, ask: Callable[[], object], messages, go) -> None:
    for _ in range(WARMUP):
        ask()
    messages.put({"kind": "ready", "who": who})
    for phase, (kind, amount) in enumerate(plan):
        if not go[phase].wait(120):
            raise TimeoutError(f"{who}: no start signal for phase {phase}")
        if kind == "count":
            times = []
            for _ in range(amount):
                started = time.perf_counter()
                ask()
                times.append(time.perf_counter() - started)
            messages.put({"kind": "done", "who": who, "phase": phase, "times": times})
        else:
            replies, deadline, cpu = 0, time.monotonic() + amount, time.process_time()
            while time.monotonic() < deadline:
                ask()
                replies += 1
            cpu = time.process_time() - cpu  # every thread of this client: the gRPC stack's too
            messages.put({"kind": "done", "who": who, "phase": phase, "replies": replies, "cpu_s": cpu})


def _model_ms(registry, policy_name: str, batches: tuple[int, ...], passes: int) -> list[float]:
    """p50 of the forward pass alone per batch size: the published weights, copies of the clients' observation, on a
    thread with the server's torch threads; the sizes alternate pass by pass, so the machine's load hits each alike."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from policies.weights import policy_from_bytes

    latest = registry.latest(policy_name)
    policy = policy_from_bytes(registry.read_verified(policy_name, latest.version))
    policy.eval()
    observations = [[{"state": _state(0)}] * batch for batch in batches]

    def timed() -> list[float]:
        for _ in range(min(WARMUP, passes)):
            for batch in observations:
                policy.act_batch(batch)
        times: list[list[float]] = [[] for _ in batches]
        for _ in range(passes):
            for batch, samples in zip(observations, times, strict=True):
                started = time.perf_counter()
                policy.act_batch(batch)
                samples.append(time.perf_counter() - started)
        return [float(np.median(samples)) * 1e3 for samples in times]

    with ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(INFERENCE_THREADS,)) as thread:
        return thread.submit(timed).result()


def _publish(registry) -> None:
    from policies.factory import make_policy
    from policies.weights import policy_to_bytes

    observation = {"state": {"shape": [STATE], "dtype": "float32"}}
    for name, hidden in ((SMALL, [256, 256]), (WIDE, WIDE_HIDDEN)):
        config = {"observation": observation, "action_dim": 4, "hidden": hidden}
        registry.publish(name, policy_to_bytes(make_policy("mlp", {**config, "chunk_size": 10})))
    # lerobot's diffusion policy wants the state as the robot's and as the environment's (it has no camera here)
    inputs = {"observation.state": ["state"], "observation.environment_state": ["state"]}
    config = {"observation": observation, "action_dim": 4, "lerobot_type": "diffusion", "inputs": inputs}
    registry.publish(DIFFUSION, policy_to_bytes(make_policy("lerobot", {**config, "lerobot_config": DIFFUSION_CONFIG})))


def _phase(children: Children, go, phase: int, count: int, before: Callable[[], None] = lambda: None) -> list[dict]:
    before()
    go[phase].set()
    return children.receive("done", count, timeout_s=300)


def _one_client(children: Children, cloud: GatewayHarness, openpi_url: str, spools: Path, requests: int, say):
    """Round trips of one client at a time, ours then openpi's, each against the model time just before it."""
    results = []
    clients = ("tunnel", "openpi") if importlib.util.find_spec("openpi_client") else ("tunnel",)
    if len(clients) == 1:
        say("openpi_client is not installed (scripts/bootstrap.sh installs it): its row is left out")
    for who in clients:
        go = [SPAWN.Event()]
        plan = [("count", requests)]
        if who == "tunnel":
            args = (cloud.target, "solo", SMALL, str(spools / "solo.db"), plan, children.messages, go)
            children.start(tunnel_client_main, *args, name="tunnel-solo")
        else:
            children.start(openpi_client_main, openpi_url, "openpi", plan, children.messages, go, name="openpi")
        children.receive("ready", 1, timeout_s=120)
        (model,) = _model_ms(cloud.registry, SMALL, (1,), requests)
        (done,) = _phase(children, go, 0, 1)
        p50, p99 = (float(np.percentile(done["times"], q)) * 1e3 for q in (50, 99))
        overhead = p50 - model
        say(
            f"inference via {who}: p50 {p50:.3f} ms, p99 {p99:.3f} ms, the model alone p50 {model:.3f} ms: overhead "
            f"{overhead:.3f} ms (goal <= {GOAL_OVERHEAD_MS:g} ms)"
        )
        client = "the edge's TunnelClient" if who == "tunnel" else "openpi_client.WebsocketClientPolicy"
        note = f"{LOWER}; {client}, 21-in 4-out MLP; overhead p50 {overhead:.3f} ms (goal <= {GOAL_OVERHEAD_MS:g})"
        results.append(Result(f"inference {who} 1 client p50 vs model", p50, "ms", model, note))
    return results


def _eight_clients(
    children: Children, cloud: GatewayHarness, spools: Path, seconds: float, rounds: int, policy: str, say
) -> Result:
    """Replies/s of 8 clients of ``policy``, alternately with max_batch 1 and 16: the median of ``rounds`` rounds each
    (the machine is shared: a burst of load elsewhere can halve one phase)."""
    batches = (1, 16) * rounds
    go = [SPAWN.Event() for _ in batches]
    plan = [("seconds", seconds)] * len(batches)
    for i in range(CLIENTS):
        args = (cloud.target, f"{policy}-{i}", policy, str(spools / f"{policy}-{i}.db"), plan, children.messages, go)
        children.start(tunnel_client_main, *args, name=f"tunnel-{policy}-{i}")
    children.receive("ready", CLIENTS, timeout_s=180)
    passes = 100 if policy == WIDE else 15
    one, eight = _model_ms(cloud.registry, policy, (1, CLIENTS), passes)
    server, label = cloud.gateway.inference, THROUGHPUT[policy]
    rates: dict[int, list[float]] = {1: [], 16: []}
    for phase, max_batch in enumerate(batches):
        before, cpu = server.stats.forward_passes, time.process_time()
        done = _phase(children, go, phase, CLIENTS, before=lambda m=max_batch: setattr(server, "max_batch", m))
        replies = sum(d["replies"] for d in done)
        rates[max_batch].append(replies / seconds)
        mean = replies / max(1, server.stats.forward_passes - before)
        clients_ms, server_ms = (
            1e3 * c / max(1, replies) for c in (sum(d["cpu_s"] for d in done), time.process_time() - cpu)
        )
        say(
            f"inference, {CLIENTS} clients, {label}, max_batch {max_batch}: {replies / seconds:.0f} replies/s, "
            f"{mean:.1f} a pass; CPU a reply: clients {clients_ms:.2f} ms, server {server_ms:.2f} ms"
        )
    server.max_batch = 16
    batched, unbatched = float(np.median(rates[16])), float(np.median(rates[1]))
    say(
        f"the {label} alone: {one:.3f} ms a pass of 1, {eight:.3f} ms of {CLIENTS} ({eight / one:.2f}x); batching "
        f"{batched:.0f} vs {unbatched:.0f} replies/s: {batched / unbatched:.2f}x (goal >= {GOAL_SPEEDUP:g}x)"
    )
    note = (
        f"{HIGHER}; 8 TunnelClients, {label} (a pass of 1: {one:.2f} ms, of 8: {eight:.2f} ms, 1 torch thread); "
        f"goal >= {GOAL_SPEEDUP:g}x"
    )
    name = f"inference {CLIENTS} clients batched vs max_batch 1" + ("" if policy == WIDE else f", {policy}")
    return Result(name, batched, "replies/s", unbatched, note)


def measure(
    loop: LoopThread, workdir: Path, requests: int = 300, seconds: float = 3.0, rounds: int = 3, say=print
) -> list[Result]:
    from cloud.channels.openpi_server import OpenPiConfig, OpenPiServer

    spools = workdir / "inference-spools"
    spools.mkdir(parents=True, exist_ok=True)
    harness = GatewayHarness(loop, workdir / "inference", inference_threads=INFERENCE_THREADS)
    with harness as cloud, Children() as children:
        _publish(cloud.registry)
        openpi = OpenPiServer(cloud.gateway.inference, cloud.registry, OpenPiConfig(default_policy=SMALL))
        port = loop.call(openpi.start())
        try:
            results = _one_client(children, cloud, f"ws://127.0.0.1:{port}/{SMALL}", spools, requests, say)
            results += [_eight_clients(children, cloud, spools, seconds, rounds, policy, say) for policy in THROUGHPUT]
        finally:
            loop.call(openpi.stop())
    return results
