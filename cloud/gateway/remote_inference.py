"""Remote inference over the tunnel: an edge whose policy runs in the cloud sends observations and gets action
chunks back, from the shared batched inference server. Each tunnel may have ``max_inference_queue`` requests
waiting; more are answered at once with an error naming that limit, so one device's flood never queues ahead of
the others' requests."""

from __future__ import annotations

import numpy as np

from cloud.gateway.bounds import DecodePool
from cloud.gateway.config import GatewayConfig
from cloud.gateway.sessions import Session
from cloud.serving.inference import InferenceJob, InferenceServer
from protocol import tunnel_pb2 as pb
from protocol.arrays import CodecError, encode_array
from protocol.steps import decode_observation, decoded_bytes


async def infer(
    session: Session, request: pb.InferenceRequest, server: InferenceServer, config: GatewayConfig, decoder: DecodePool
) -> None:
    """Queues the request for the next batched forward pass; the reply goes down the session's tunnel."""
    if not session.remote:
        raise CodecError("infer", "this edge runs its policy itself (say remote_inference in the hello)")

    def answer(error: str, actions: np.ndarray | None = None, version: int = 0, batch_size: int = 0) -> None:
        reply = pb.InferenceReply(
            request_id=request.request_id, policy_version=version, error=error, batch_size=batch_size
        )
        if actions is not None:
            reply.actions.CopyFrom(encode_array(actions))
        session.send(pb.CloudMessage(actions=reply))

    if not session.policy_name or not session.may_run(session.policy_name):  # no task, or one its credential forbids
        answer(f"may not run {session.policy_name}: hold still" if session.policy_name else "no task: hold still")
        return
    limit = config.max_inference_queue
    if session.inference_waiting >= limit:  # refused before its observation is even decoded
        session.inference_refused += 1
        answer(f"infer: {limit} requests of this robot already wait (max_inference_queue); wait for their replies")
        return
    cost = request.ByteSize() + decoded_bytes(session.schema, prefix="obs.")
    observation = await decoder.run(
        cost, lambda: decode_observation(request, session.schema, config.max_batch_bytes, config.max_decoded_bytes)
    )
    session.inference_waiting += 1

    def reply(actions: np.ndarray | None, version: int, error: str, batch_size: int) -> None:
        session.inference_waiting -= 1
        answer(error, actions, version, batch_size)

    server.submit(session.policy_name, InferenceJob(observation, reply))
