"""Foresight for phones: the current ``phone`` policy's predicted trajectory, shown live on the phone, and, for a
stopped episode, how far that prediction was from what the demonstrator did (``cloud.serving.foresight``)."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from cloud.channels.phone_messages import PhoneError, PhoneStep, decode_jpeg, parse_gripper, parse_pose
from cloud.data.version_registry import PolicyRegistry
from cloud.serving import foresight
from cloud.serving.inference import InferenceJob, InferenceServer

log = logging.getLogger("fleetloop.phone")

POLICY = "phone"  # the policy whose predicted trajectory a phone's foresight request is answered with
FORESIGHT_TIMEOUT_S = 10.0
SCORE_TIMEOUT_S = 20.0  # scoring a stopped episode's foresight may delay its ack this long; unscored steps: NaN
SCORE_BATCH = 16  # steps scored per inference request burst (the inference server's batch size)


class PhoneForesight:
    """Asks the shared batched inference server for the phone policy's action chunks."""

    def __init__(self, registry: PolicyRegistry, inference: InferenceServer, image_size: tuple[int, int]) -> None:
        self.registry = registry
        self.inference = inference
        self.image_size = image_size  # (height, width) frames are decoded to

    async def answer(self, header: dict, jpeg: bytes) -> dict:
        """Visual foresight: the current phone policy's predicted end-effector positions for this frame and pose
        (its action chunk's x y z), through the shared batched inference server. No policy: no points."""
        latest = await asyncio.to_thread(self.registry.latest, POLICY)
        if latest is None:
            return {"type": "foresight", "version": 0, "points": []}
        pose = parse_pose(header.get("pose"), "foresight.pose")
        gripper = parse_gripper(header.get("gripper"), "foresight.gripper")
        if not jpeg:
            raise PhoneError("foresight.image", "the frame carries no JPEG after its header")
        try:
            image = await asyncio.to_thread(decode_jpeg, jpeg, *self.image_size)
        except PhoneError as err:
            raise PhoneError("foresight.image", err.message) from None
        observation = {"image": image, "pose": pose, "gripper": np.array([gripper], dtype=np.float32)}
        try:
            actions, version, error = await asyncio.wait_for(self.predict(observation), FORESIGHT_TIMEOUT_S)
        except TimeoutError:
            raise PhoneError("foresight", "the policy did not answer in time") from None
        if error:
            raise PhoneError("foresight", f"the {POLICY} policy failed: {error}")
        chunk = np.asarray(actions, dtype=np.float64).reshape(-1, actions.shape[-1])
        if chunk.shape[1] < 3:
            raise PhoneError("foresight", f"the {POLICY} policy's actions have {chunk.shape[1]} values, not x y z ...")
        points = [[round(float(v), 5) for v in row[:3]] for row in chunk if np.isfinite(row[:3]).all()]
        return {"type": "foresight", "version": int(version), "points": points}

    def predict(self, observation: dict[str, np.ndarray]) -> asyncio.Future:
        """The phone policy's action chunk for one observation, through the shared batched inference server:
        a future of (actions, version, error)."""
        answer: asyncio.Future = asyncio.get_running_loop().create_future()

        def reply(actions, version: int, error: str, batch_size: int) -> None:
            if not answer.done():
                answer.set_result((actions, version, error))

        self.inference.submit(POLICY, InferenceJob(observation, reply))
        return answer

    async def score(self, steps: list[PhoneStep], actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per step, how far the current phone policy's predicted trajectory was from the demonstration (metres)
        and the version asked; NaN and 0 where no policy answered (none published, failed, or too slow)."""
        errors = np.full(len(steps), np.nan, np.float32)
        versions = np.zeros(len(steps), np.int64)
        if await asyncio.to_thread(self.registry.latest, POLICY) is None:
            return errors, versions
        started = time.monotonic()
        deadline = started + SCORE_TIMEOUT_S
        late = 0
        # A batch at a time: live foresight requests (this phone's and others') queue between these batches
        # instead of behind a whole episode.
        for first in range(0, len(steps), SCORE_BATCH):
            batch = steps[first : first + SCORE_BATCH]
            futures = [
                self.predict({"image": s.image, "pose": s.pose, "gripper": np.array([s.gripper], np.float32)})
                for s in batch
            ]
            done, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - time.monotonic()))
            for index, future in enumerate(futures, start=first):
                if future not in done:
                    continue
                chunk, version, error = future.result()
                if error or chunk is None or np.shape(chunk)[-1] < 3 or not np.isfinite(chunk).all():
                    continue
                errors[index] = foresight.step_error(chunk, actions, index)
                versions[index] = version
            if pending:  # out of time: this batch's stragglers and every later step stay unscored
                late = len(steps) - first - len(done)
                break
        scored = np.isfinite(errors)
        if late or not scored.all():
            log.warning("foresight scored %d of %d steps (%d too late)", scored.sum(), len(steps), late)
        if scored.any():
            log.info(
                "foresight of phone v%d was off by %.3f m on average (worst %.3f m) over %d steps (%.1f s)",
                versions[scored].max(),
                errors[scored].mean(),
                errors[scored].max(),
                scored.sum(),
                time.monotonic() - started,
            )
        return errors, versions
