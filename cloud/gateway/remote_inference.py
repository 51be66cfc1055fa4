"""Remote inference over the tunnel: an edge whose policy runs in the cloud sends observations and gets action
chunks back, from the shared batched inference server."""

from __future__ import annotations

import numpy as np

from cloud.gateway.sessions import Session
from cloud.serving.inference import InferenceJob, InferenceServer
from protocol import tunnel_pb2 as pb
from protocol.arrays import CodecError, encode_array
from protocol.steps import decode_observation


def infer(session: Session, request: pb.InferenceRequest, server: InferenceServer, max_batch_bytes: int) -> None:
    """Queues the request for the next batched forward pass; the reply goes down the session's tunnel."""
    if not session.remote:
        raise CodecError("infer", "this edge runs its policy itself (say remote_inference in the hello)")
    if not session.policy_name or not session.may_run(session.policy_name):  # no task, or one its credential forbids
        why = f"may not run {session.policy_name}" if session.policy_name else "no task"
        session.send(
            pb.CloudMessage(actions=pb.InferenceReply(request_id=request.request_id, error=f"{why}: hold still"))
        )
        return
    observation = decode_observation(request, session.schema, max_batch_bytes)

    def reply(actions: np.ndarray | None, version: int, error: str, batch_size: int) -> None:
        answer = pb.InferenceReply(
            request_id=request.request_id, policy_version=version, error=error, batch_size=batch_size
        )
        if actions is not None:
            answer.actions.CopyFrom(encode_array(actions))
        session.send(pb.CloudMessage(actions=answer))

    server.submit(session.policy_name, InferenceJob(observation, reply))
