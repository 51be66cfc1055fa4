"""The phone channel over the real cloud: a websockets client plays a phone (docs/phone-protocol.md).

It pairs with the token `fleetloop cloud` prints, records episodes with JPEG frames, drops its link mid-episode
and resends, sends bad messages; the episode store on disk and `fleetloop fleet` show what landed.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import re
import ssl
import struct

import numpy as np
import pytest
import qrcode
import torch
import websockets
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect

from cloud.data.layout import DataLayout
from cloud.data.learner_key import signing_registry
from cloud.data.store import ColumnSpec, EpisodeStore
from cloud.learning.config import LearnerConfig
from cloud.learning.policy_choice import policy_for_schema
from cloud.learning.sampler import LABELLED_KINDS, Sampler, load_steps
from fleetloop.fleet_view import fetch
from policies.weights import policy_to_bytes
from protocol.steps import schema_for
from tests.e2e.fleet import Fleet, free_port, wait_until
from tests.e2e.store_checks import check_store, wait_compacted

HEIGHT, WIDTH = 48, 64
CAPABILITIES = {"camera": True, "pose": True, "gripper": True, "rate_hz": 15}


def color(seq: int) -> tuple[int, int, int]:
    return (seq * 8 % 256, 255 - seq * 8 % 256, (seq * 37) % 256)


def jpeg(seq: int) -> bytes:
    """A 480x640 camera frame of one colour per seq (the cloud stores it at HEIGHTxWIDTH)."""
    pixels = np.zeros((480, 640, 3), np.uint8)
    pixels[:] = color(seq)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def pose(episode: int, seq: int) -> list[float]:
    angle = 0.05 * seq
    return [0.1 * episode + 0.01 * seq, -0.02 * seq, 0.3, 0.0, 0.0, float(np.sin(angle / 2)), float(np.cos(angle / 2))]


def gripper(seq: int) -> float:
    return 0.08 - 0.002 * seq


def step_frame(episode_id: str, episode: int, seq: int, **override) -> bytes:
    header = {
        "type": "step",
        "episode_id": episode_id,
        "seq": seq,
        "t_mono_ns": 1_000_000_000 + seq * 66_000_000,
        "pose": pose(episode, seq),
        "gripper": gripper(seq),
        **override,
    }
    data = json.dumps(header).encode()
    return struct.pack(">I", len(data)) + data + jpeg(seq)


async def reply(ws: ClientConnection, timeout_s: float = 20.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout_s))


def phone_tls(fleet: Fleet) -> ssl.SSLContext:
    """Trusts the CA the cloud made at its first start for the phone page (it serves phones over TLS only)."""
    return ssl.create_default_context(cafile=str(fleet.root / "data" / "certs" / "ca.pem"))


async def hello(fleet: Fleet, phone_id: str, **credential) -> tuple[ClientConnection, dict]:
    ws = await connect(f"wss://127.0.0.1:{fleet.phone_port}", ssl=phone_tls(fleet))
    await ws.send(json.dumps({"type": "hello", "phone_id": phone_id, "capabilities": CAPABILITIES, **credential}))
    return ws, await reply(ws)


async def refused(fleet: Fleet, **fields) -> dict:
    ws = await connect(f"wss://127.0.0.1:{fleet.phone_port}", ssl=phone_tls(fleet))
    await ws.send(json.dumps({"type": "hello", "capabilities": CAPABILITIES, **fields}))
    answer = await reply(ws)
    with pytest.raises(websockets.ConnectionClosed):  # a refused hello ends that connection
        await asyncio.wait_for(ws.recv(), 10)
    return answer


def stored_episodes(fleet: Fleet) -> dict[str, dict]:
    wait_compacted(fleet.root / "data" / "store")  # what the cloud acked is in the store
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)
    try:
        check_store(store, "phone")  # every episode's seqs 0..n-1 exactly once
        rows = store.read("phone")
        out = {}
        for episode in store.episodes("phone"):
            picked = store.row_indices("phone", episode.episode_id)
            picked = picked[np.argsort(rows["seq"][picked])]
            out[episode.episode_id] = {"record": episode, **{name: values[picked] for name, values in rows.items()}}
        return out
    finally:
        store.close()


def check_episode(stored: dict, episode: int, steps: int, success: bool) -> None:
    record = stored["record"]
    assert (record.num_steps, record.source, record.intervention_steps) == (steps, "phone", steps)
    np.testing.assert_array_equal(stored["seq"], np.arange(steps))
    poses = np.array([pose(episode, s) for s in range(steps)], np.float32)
    grips = np.array([[gripper(s)] for s in range(steps)], np.float32)
    np.testing.assert_allclose(stored["obs.pose"], poses, atol=1e-6)
    np.testing.assert_allclose(stored["obs.gripper"], grips, atol=1e-7)
    targets = np.concatenate([poses, grips], axis=1)
    np.testing.assert_allclose(stored["action"][:-1], targets[1:], atol=1e-6)  # the next step's pose and gripper
    np.testing.assert_allclose(stored["action"][-1], targets[-1], atol=1e-6)  # the last step holds
    assert stored["obs.image"].shape == (steps, HEIGHT, WIDTH, 3) and stored["obs.image"].dtype == np.uint8
    means = stored["obs.image"].reshape(steps, -1, 3).mean(axis=1)
    np.testing.assert_allclose(means, [color(s) for s in range(steps)], atol=6)  # each frame is its own step's
    assert stored["intervention"].all() and not stored["policy_version"].any()
    np.testing.assert_array_equal(stored["t_mono_ns"], [1_000_000_000 + s * 66_000_000 for s in range(steps)])
    assert stored["done"].tolist() == [False] * (steps - 1) + [True]
    assert stored["success"].tolist() == [False] * (steps - 1) + [success]


def pairing_tokens(fleet: Fleet) -> list[str]:
    return re.findall(r"phone pairing token: (pair_\S+)", fleet.log("cloud"))


def start_phone_cloud(fleet: Fleet) -> Fleet:
    """The fleet's cloud with its phone channel on a free port (``fleet.phone_port``), once it offers pairing."""
    fleet.phone_port = free_port()
    fleet.start_cloud("--phone-port", str(fleet.phone_port), "--phone-image", f"{HEIGHT}x{WIDTH}")
    wait_until(lambda: pairing_tokens(fleet), 30, "the cloud to print a pairing token")
    return fleet


@pytest.fixture
def phone_cloud(fleet: Fleet) -> Fleet:
    return start_phone_cloud(fleet)


def printed_qr(output: str, url: str) -> list[list[int]]:
    """The QR code printed after "scan to pair a phone: <url>" (half blocks, light modules drawn), as dark = 1."""
    lines = output.split(f"scan to pair a phone: {url}\n", 1)[1].splitlines()
    block = list(itertools.takewhile(lambda line: line and set(line) <= set(" ▀▄█"), lines))
    light = []  # two module rows a character: upper light "▀", lower light "▄", both "█"
    for line in block:
        light.append([int(c in "▀█") for c in line])
        light.append([int(c in "▄█") for c in line])
    dark = np.array([[1 - v for v in row] for row in light])
    rows, cols = np.nonzero(dark)
    assert rows.min() >= 2 and cols.min() >= 2 and cols.max() <= dark.shape[1] - 3, "no quiet zone around the code"
    return dark[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].tolist()


def test_phone_pairs_streams_survives_a_drop_and_refuses_bad_input(phone_cloud: Fleet) -> None:
    fleet = phone_cloud
    port = fleet.phone_port
    url = f"https://127.0.0.1:{port}/phone?pair={pairing_tokens(fleet)[0]}"
    assert url in fleet.log("cloud")
    qr = qrcode.QRCode(border=0)  # what a phone's camera reads: the same modules as qrcode's code for the URL
    qr.add_data(url)
    qr.make(fit=True)
    assert printed_qr(fleet.log("cloud"), url) == [[int(m) for m in row] for row in qr.get_matrix()]

    async def scenario() -> None:
        # ---- pairing: a wrong token is refused by field; the right one yields a per-phone credential, once
        answer = await refused(fleet, phone_id="phone-1", pair="pair_wrong")
        assert (answer["type"], answer["field"]) == ("error", "hello.pair")
        first = pairing_tokens(fleet)[0]
        ws, welcome = await hello(fleet, "phone-1", pair=first)
        assert welcome["type"] == "welcome" and welcome["token"].startswith("flt_"), welcome
        assert welcome["image"] == {"height": HEIGHT, "width": WIDTH}
        token = welcome["token"]
        answer = await refused(fleet, phone_id="phone-9", pair=first)
        assert (answer["type"], answer["field"]) == ("error", "hello.pair"), "a used pairing token works again"
        answer = await refused(fleet, phone_id="phone-1", token="flt_not-its-token")
        assert (answer["type"], answer["field"]) == ("error", "hello.token")
        answer = await refused(fleet, phone_id="phone-x", token=token, capabilities={"camera": True, "pose": True})
        assert answer["field"] == "hello.capabilities.gripper"
        assert token not in fleet.log("cloud"), "a phone credential appeared in the cloud's output"

        # ---- episode 1: 30 steps with JPEG frames, acked only once durable
        await ws.send(json.dumps({"type": "start", "episode_id": "p1-ep1", "task": "pick the cup"}))
        for seq in range(30):
            await ws.send(step_frame("p1-ep1", 1, seq))
        await ws.send(json.dumps({"type": "stop", "episode_id": "p1-ep1", "num_steps": 30, "success": True}))
        assert await reply(ws) == {"type": "ack", "episode_id": "p1-ep1", "next_seq": 30}
        stored = stored_episodes(fleet)  # read right after the ack: once the ingest log is empty, it is in the store
        check_episode(stored["p1-ep1"], 1, 30, success=True)
        assert (stored["p1-ep1"]["record"].resource_id, stored["p1-ep1"]["record"].task) == ("phone-1", "pick the cup")

        members = {m.resource.id: m for m in fetch(fleet.target).members}
        phone = members["phone-1"]
        assert (phone.resource.kind, phone.resource.source, phone.resource.capabilities.embodiment) == (
            "phone",
            "phone",
            "phone",
        )
        assert phone.state != "lost" and phone.steps == 30 and phone.interventions == 30
        assert {s.name: list(s.shape) for s in phone.resource.capabilities.observation} == {
            "image": [HEIGHT, WIDTH, 3],
            "pose": [7],
            "gripper": [1],
        }

        # ---- bad input: errors name the field; another phone's connection keeps serving throughout
        second = pairing_tokens(fleet)[-1]
        assert second != first
        other, welcome2 = await hello(fleet, "phone-2", pair=second)
        assert welcome2["type"] == "welcome"
        await other.send(json.dumps({"type": "start", "episode_id": "p2-ep1"}))
        bad = [
            (b"\x00\x00\x10\x00{}", "step.header_length"),
            (step_frame("p2-ep1", 2, 0, pose=[0, 0, 0, 0, 0, 1]), "step.pose"),
            (step_frame("p2-ep1", 2, 0, pose=[0, 0, 0, 0, 0, 0.5, 0.5]), "step.pose"),
            (step_frame("p2-ep1", 2, 0, gripper=float("nan")), "step.gripper"),
            (step_frame("p2-ep1", 2, -1), "step.seq"),
            (step_frame("p2-ep1", 2, 0)[:-300] + b"\xff" * 10, "step.image"),
            (step_frame("nope", 2, 0), "step.episode_id"),
            (step_frame("p1-ep1", 2, 0), "step.episode_id"),  # phone-1's episode
            ("not json", "message"),
            (json.dumps({"type": "teleport"}), "type"),
            (json.dumps({"type": "stop", "episode_id": "p2-ep1", "num_steps": "3"}), "stop.num_steps"),
            (json.dumps({"type": "start", "episode_id": ""}), "start.episode_id"),
        ]
        for message, field in bad:
            await other.send(message)
            answer = await reply(other)
            assert (answer["type"], answer["field"]) == ("error", field), (field, answer)
        for seq in range(3):
            await other.send(step_frame("p2-ep1", 2, seq))
        await other.send(json.dumps({"type": "stop", "episode_id": "p2-ep1", "num_steps": 5}))
        answer = await reply(other)
        assert (answer["field"], "3-4" in answer["message"]) == ("stop.num_steps", True), answer
        await other.send(json.dumps({"type": "discard", "episode_id": "p2-ep1"}))
        assert await reply(other) == {"type": "discarded", "episode_id": "p2-ep1"}
        await other.send(json.dumps({"type": "ping"}))
        assert (await reply(other))["type"] == "pong"  # still serving after all that

        # ---- episode 2: the link drops mid-episode; the phone reconnects and resends all it holds unacked
        await ws.send(json.dumps({"type": "start", "episode_id": "p1-ep2"}))
        for seq in range(18):
            await ws.send(step_frame("p1-ep2", 2, seq))
        await ws.send(json.dumps({"type": "ping"}))
        assert (await reply(ws))["type"] == "pong"  # the cloud has read those 18 steps
        ws.transport.abort()  # the link drops: no close handshake
        ws, welcome = await hello(fleet, "phone-1", token=token)
        assert welcome["type"] == "welcome" and "token" not in welcome
        assert welcome["open_episodes"] == ["p1-ep2"]
        await ws.send(json.dumps({"type": "start", "episode_id": "p1-ep2"}))
        for seq in range(30):  # steps 0..17 a second time, then the rest
            await ws.send(step_frame("p1-ep2", 2, seq))
        await ws.send(json.dumps({"type": "stop", "episode_id": "p1-ep2", "num_steps": 30}))
        assert await reply(ws) == {"type": "ack", "episode_id": "p1-ep2", "next_seq": 30}
        # The ack was lost on a second drop: the phone resends the whole episode; the store keeps each step once.
        ws.transport.abort()
        ws, _ = await hello(fleet, "phone-1", token=token)
        await ws.send(json.dumps({"type": "start", "episode_id": "p1-ep2"}))
        assert await reply(ws) == {"type": "ack", "episode_id": "p1-ep2", "next_seq": 30}
        for seq in (0, 17, 29):
            await ws.send(step_frame("p1-ep2", 2, seq))
        await ws.send(json.dumps({"type": "stop", "episode_id": "p1-ep2", "num_steps": 30}))
        assert await reply(ws) == {"type": "ack", "episode_id": "p1-ep2", "next_seq": 30}
        await ws.send(json.dumps({"type": "discard", "episode_id": "p1-ep2"}))
        assert (await reply(ws))["field"] == "discard.episode_id"  # a stored episode stays stored
        await ws.close()
        await other.close()

    asyncio.run(scenario())
    stored = stored_episodes(fleet)
    assert sorted(stored) == ["p1-ep1", "p1-ep2"], "a discarded episode reached the store"
    check_episode(stored["p1-ep1"], 1, 30, success=True)
    check_episode(stored["p1-ep2"], 2, 30, success=False)
    for episode in stored.values():  # no phone policy was published: nothing to score the demonstrations with
        assert np.isnan(episode["meta.foresight_error"]).all() and not episode["meta.foresight_version"].any()
    wait_until(
        lambda: {m.resource.id: m.state for m in fetch(fleet.target).members}.get("phone-1") == "lost", 15, "lost"
    )
    assert fleet.stop("cloud") == 0


def publish_constant_phone_policy(fleet: Fleet, position: list[float], chunk: int) -> None:
    """A phone policy (the learner's CNN, chunk of ``chunk``) that predicts ``position`` for every frame and pose:
    its output layer is zeroed, so every action is the action normalization's mean."""
    spec = [("image", "|u1", (HEIGHT, WIDTH, 3)), ("pose", "<f4", (7,)), ("gripper", "<f4", (1,))]
    schema = {k: ColumnSpec(d, s) for k, (d, s) in schema_for(spec, ("<f4", (8,))).items()}
    policy = policy_for_schema(schema, hidden=(8,), chunk_size=chunk)
    with torch.no_grad():
        policy.head[-1].weight.zero_()
        policy.head[-1].bias.zero_()
    policy.action_mean = torch.tensor([*position, 0, 0, 0, 1, 0.05], dtype=torch.float32)
    signing_registry(DataLayout(fleet.root / "data")).publish("phone", policy_to_bytes(policy))


def test_a_stopped_episode_stores_how_wrong_the_foresight_was_and_the_learner_weights_it(phone_cloud: Fleet) -> None:
    """Closing the loop: with a phone policy published, the cloud scores each demonstrated step against the
    trajectory the policy predicts from it (what the page's overlay shows), stores the error, and the learner's
    sampler draws the steps where the foresight was wrong more often."""
    fleet = phone_cloud
    predicted = [0.1, -0.05, 0.3]  # where the policy always says the end effector goes
    publish_constant_phone_policy(fleet, predicted, chunk=3)
    steps = 20

    async def scenario() -> None:
        ws, welcome = await hello(fleet, "phone-1", pair=pairing_tokens(fleet)[0])
        assert welcome["type"] == "welcome"
        header = json.dumps({"type": "foresight", "pose": pose(1, 0), "gripper": 0.05}).encode()
        await ws.send(struct.pack(">I", len(header)) + header + jpeg(0))
        answer = await reply(ws)
        assert answer["type"] == "foresight" and answer["version"] == 1, answer
        np.testing.assert_allclose(answer["points"], [predicted] * 3, atol=1e-5)  # the chunk's x y z, in order
        await ws.send(json.dumps({"type": "start", "episode_id": "scored"}))
        for seq in range(steps):
            await ws.send(step_frame("scored", 1, seq))
        await ws.send(json.dumps({"type": "stop", "episode_id": "scored", "num_steps": steps}))
        assert await reply(ws) == {"type": "ack", "episode_id": "scored", "next_seq": steps}
        await ws.close()

    asyncio.run(scenario())
    stored = stored_episodes(fleet)["scored"]
    check_episode(stored, 1, steps, success=False)
    # Step i's demonstrated trajectory: the poses of steps i+1, i+2, i+3 (the last pose holds past the end).
    reached = np.array([pose(1, min(s, steps - 1))[:3] for s in range(steps + 3)])
    expected = [np.linalg.norm(reached[i + 1 : i + 4] - predicted, axis=1).mean() for i in range(steps)]
    np.testing.assert_allclose(stored["meta.foresight_error"], expected, atol=1e-5)
    assert (stored["meta.foresight_version"] == 1).all()
    assert "foresight of phone v1 was off by" in fleet.log("cloud")

    # The learner's sampler: a step weighs error / 2 cm (at least 1, at most 5), relative to the others.
    store = EpisodeStore(fleet.root / "data" / "store", read_only=True)
    try:
        table = load_steps(store, "phone", ["obs.pose", "action"])
    finally:
        store.close()
    config = LearnerConfig()
    sampler = Sampler.build(
        table, None, LABELLED_KINDS, config.staleness, 1, priority=config.sampler.foresight_weights(table)
    )
    weights = np.clip(np.array(expected) / 0.02, 1, 5)
    np.testing.assert_allclose(sampler.probabilities(), weights / weights.sum(), rtol=1e-4)
    assert sampler.boosted == int((np.array(expected) > 0.02).sum()) > 0
    assert fleet.stop("cloud") == 0


def test_a_phone_dataset_from_before_foresight_errors_still_takes_episodes(tmp_path, fleet: Fleet) -> None:
    """A store whose phone dataset has no meta.foresight_* columns keeps working: episodes go in without them."""
    spec = [("image", "|u1", (HEIGHT, WIDTH, 3)), ("pose", "<f4", (7,)), ("gripper", "<f4", (1,))]
    with EpisodeStore(tmp_path / "data" / "store") as store:
        store.ensure_dataset("phone", {k: ColumnSpec(d, s) for k, (d, s) in schema_for(spec, ("<f4", (8,))).items()})
    start_phone_cloud(fleet)
    publish_constant_phone_policy(fleet, [0.0, 0.0, 0.3], chunk=2)

    async def scenario() -> None:
        ws, _ = await hello(fleet, "phone-1", pair=pairing_tokens(fleet)[0])
        await ws.send(json.dumps({"type": "start", "episode_id": "old-store"}))
        for seq in range(5):
            await ws.send(step_frame("old-store", 1, seq))
        await ws.send(json.dumps({"type": "stop", "episode_id": "old-store", "num_steps": 5}))
        assert await reply(ws) == {"type": "ack", "episode_id": "old-store", "next_seq": 5}
        await ws.close()

    asyncio.run(scenario())
    stored = stored_episodes(fleet)["old-store"]
    check_episode(stored, 1, 5, success=False)
    assert "meta.foresight_error" not in stored
    assert "predates foresight errors" in fleet.log("cloud")
