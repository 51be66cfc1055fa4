"""A phone's episodes on their way into the episode store: steps are held in memory by seq while the episode is
open; a stop writes the whole episode through the gateway's StoreWriter (group commit) and returns once the
write is durable. A resend is merged by seq, and an episode already stored is never written twice."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import numpy as np
from websockets.asyncio.server import ServerConnection

from cloud.channels.phone_foresight import PhoneForesight
from cloud.channels.phone_messages import (
    DATASET,
    PhoneError,
    PhoneStep,
    decode_jpeg,
    parse_step_header,
    parse_stop,
    phone_capabilities,
    seq_ranges,
)
from cloud.data.store import ColumnSpec, EpisodeStore, StepRows
from cloud.gateway.fleet import FleetScheduler
from cloud.gateway.ingest import PendingBatch, StoreWriter
from cloud.serving import foresight
from hal.resource import ResourceInfo
from protocol.steps import schema_for

log = logging.getLogger("fleetloop.phone")

BATCH_STEPS = 256  # an episode goes to the StoreWriter in batches of this many steps


@dataclass
class OpenEpisode:
    episode_id: str
    task: str
    steps: dict[int, PhoneStep] = field(default_factory=dict)
    nbytes: int = 0


@dataclass
class Phone:
    """What the cloud holds for one phone across its connections."""

    phone_id: str
    resource: ResourceInfo
    connection: ServerConnection | None = None
    episodes: dict[str, OpenEpisode] = field(default_factory=dict)

    @property
    def held_bytes(self) -> int:
        return sum(e.nbytes for e in self.episodes.values())


class StoreAcks:
    """The phone channel's ``AckSink``: the StoreWriter's acks and refusals resolve the futures of the batches a
    stopped episode waits on."""

    def __init__(self) -> None:
        self.steps_stored = 0
        self.batches_refused = 0
        self.waiting: dict[int, asyncio.Future] = {}
        self._next_id = 0

    def expect(self) -> tuple[int, asyncio.Future]:
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.waiting[self._next_id] = future
        return self._next_id, future

    def ack(self, batch_id: int, episode_id: str, next_seq: int, steps: int) -> None:
        self.steps_stored += steps
        future = self.waiting.pop(batch_id, None)
        if future is not None and not future.done():
            future.set_result(next_seq)

    def refuse(self, batch_id: int, field: str, message: str) -> None:
        self.batches_refused += 1
        future = self.waiting.pop(batch_id, None)
        if future is not None and not future.done():
            future.set_exception(PhoneError(field.removeprefix("step_batch."), message))


class PhoneIngest:
    """Holds the phones' open episodes and stores each stopped one, scored by foresight when the dataset can."""

    def __init__(
        self,
        store: EpisodeStore,
        writer: StoreWriter,
        fleet: FleetScheduler,
        scorer: PhoneForesight,
        image_size: tuple[int, int],
        max_episode_bytes: int,
        store_timeout_s: float,
    ) -> None:
        self.store = store
        self.writer = writer
        self.fleet = fleet
        self.scorer = scorer
        self.image_size = image_size  # (height, width) frames are stored at
        self.max_episode_bytes = max_episode_bytes  # decoded steps one phone may hold open, over all its episodes
        self.store_timeout_s = store_timeout_s  # no durable write by then: the phone is told to resend
        self.acks = StoreAcks()
        observation = phone_capabilities(*image_size, 1).observation
        self.schema = schema_for([(s.name, s.dtype, s.shape) for s in observation], ("<f4", (8,)))
        self.schema.update(foresight.COLUMNS)
        self.scored = True  # False for a phone dataset made before foresight errors were stored

    def ensure_dataset(self) -> None:
        """The store's phone dataset, made on the first start; one made before foresight errors is kept as is."""
        if DATASET in self.store.datasets() and foresight.ERROR_COLUMN not in self.store.schema(DATASET):
            # A store from before foresight errors: keep adding to it as it is, without them.
            self.scored = False
            self.schema = {k: v for k, v in self.schema.items() if k not in foresight.COLUMNS}
            log.warning(
                "the store's phone dataset predates foresight errors: phone demonstrations are stored without "
                "them and sampled evenly (a new data root stores them)"
            )
        self.store.ensure_dataset(DATASET, {k: ColumnSpec(d, s) for k, (d, s) in self.schema.items()})

    async def add_step(self, phone: Phone, header: dict, jpeg: bytes) -> None:
        """Holds a step of an open episode (a resend of one it holds, or of a stored episode, is skipped)."""
        parsed = parse_step_header(header)
        episode_id, seq = parsed.episode_id, parsed.seq
        if not jpeg:
            raise PhoneError("step.image", "the frame carries no JPEG after its header")
        episode = phone.episodes.get(episode_id)
        if episode is None:
            if self.stored(phone, episode_id, "step"):
                return  # a resend of an episode already stored: nothing to do, its stop gets the ack
            raise PhoneError("step.episode_id", f"episode {episode_id} is not open: send start first")
        if seq in episode.steps:
            return  # a resend: (episode_id, seq) is kept once
        image = await asyncio.to_thread(decode_jpeg, jpeg, *self.image_size)
        step = PhoneStep(parsed.t_mono_ns, parsed.pose, parsed.gripper, image)
        if phone.held_bytes + step.nbytes > self.max_episode_bytes:
            raise PhoneError("step", f"over {self.max_episode_bytes >> 20} MB held open: stop the episode")
        episode.steps[seq] = step
        episode.nbytes += step.nbytes

    def stored(self, phone: Phone, episode_id: str, what: str) -> int:
        """The episode's acked next_seq (in the store or still in the ingest log; 0 if neither); refuses another
        resource's episode."""
        owner = self.writer.owner(episode_id)
        if owner is None:
            return 0
        if owner != phone.phone_id:
            raise PhoneError(f"{what}.episode_id", f"episode {episode_id} belongs to another resource")
        return self.writer.next_seq(episode_id)

    async def stop(self, phone: Phone, message: dict, episode_id: str) -> int:
        """Stores a stopped episode; the stored next_seq once the write is durable."""
        num_steps, success = parse_stop(message)
        stored = self.stored(phone, episode_id, "stop")
        episode = phone.episodes.get(episode_id)
        if episode is None:
            if stored >= num_steps:
                return stored  # the ack was lost on a dropped link: say it again
            raise PhoneError("stop.episode_id", f"episode {episode_id} is not open: send start and its steps")
        missing = [seq for seq in range(num_steps) if seq not in episode.steps]
        if missing:
            raise PhoneError("stop.num_steps", f"steps missing: resend seq {seq_ranges(missing)}")
        extra = sorted(seq for seq in episode.steps if seq >= num_steps)
        if extra:
            raise PhoneError("stop.num_steps", f"{num_steps} steps, but seq {extra[0]} was sent")
        steps = [episode.steps[seq] for seq in range(num_steps)]
        columns = episode_columns(steps, success)
        if self.scored:
            errors, versions = await self.scorer.score(steps, columns["action"])
            columns[foresight.ERROR_COLUMN], columns[foresight.VERSION_COLUMN] = errors, versions
        acked = await self._write(phone, episode_id, episode.task, columns)
        phone.episodes.pop(episode_id, None)
        self.fleet.seen(phone.phone_id, steps=num_steps, interventions=num_steps, policy_version=0)
        log.info("%s stored episode %s (%d steps)", phone.phone_id, episode_id, num_steps)
        return acked

    async def _write(self, phone: Phone, episode_id: str, task: str, columns: dict[str, np.ndarray]) -> int:
        """Writes an episode's columns in batches through the StoreWriter; the highest next_seq acked."""
        num_steps = len(columns["action"])
        waits = []
        for first in range(0, num_steps, BATCH_STEPS):
            await self.writer.room(self.acks)  # all phones together hold one tunnel's share
            batch_id, future = self.acks.expect()
            rows = StepRows(
                dataset=DATASET,
                episode_id=episode_id,
                resource_id=phone.phone_id,
                source="phone",
                task=task,
                first_seq=first,
                columns={name: values[first : first + BATCH_STEPS] for name, values in columns.items()},
            )
            self.writer.submit(PendingBatch(rows=rows, batch_id=batch_id, sink=self.acks))
            waits.append(future)
        try:
            acked = await asyncio.wait_for(asyncio.gather(*waits), timeout=self.store_timeout_s)
        except TimeoutError:
            raise PhoneError("stop", "the store did not confirm the write in time: resend the episode") from None
        return max(acked)


def episode_columns(steps: list[PhoneStep], success: bool) -> dict[str, np.ndarray]:
    """The step batch: observations as recorded; action = the next step's pose and gripper (the last holds)."""
    n = len(steps)
    pose = np.stack([s.pose for s in steps]).astype("<f4")
    gripper = np.array([[s.gripper] for s in steps], dtype="<f4")
    target = np.concatenate([pose, gripper], axis=1)
    action = np.concatenate([target[1:], target[-1:]], axis=0)
    done = np.zeros(n, bool)
    done[-1] = True
    last_success = np.zeros(n, bool)
    last_success[-1] = success
    return {
        "obs.image": np.stack([s.image for s in steps]),
        "obs.pose": pose,
        "obs.gripper": gripper,
        "action": action,
        "reward": last_success.astype("<f4"),
        "done": done,
        "success": last_success,
        "intervention": np.ones(n, bool),  # a person demonstrates every step
        "policy_version": np.zeros(n, "<i8"),
        "t_mono_ns": np.array([s.t_mono_ns for s in steps], dtype="<i8"),
    }
