"""The gateway's gRPC calls fail without telling internals: grpc answers an exception a servicer did not expect with
its type and text (``Unexpected <class 'OSError'>: [Errno 28] ... /srv/fleetloop-data/...``). This interceptor
answers INTERNAL with an incident id instead, and logs the traceback under that id."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc.aio import AbortError

from protocol.incidents import internal_error

log = logging.getLogger("fleetloop.gateway")


def _guard_stream(behavior: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., AsyncIterator[Any]]:
    async def guarded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behavior(requests, context):
                yield response
        except AbortError:  # the servicer's own answer: it names the field
            raise
        except Exception:
            await context.abort(grpc.StatusCode.INTERNAL, internal_error(log, f"the call {method}"))

    return guarded


def _guard_unary(behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request, context)
        except AbortError:
            raise
        except Exception:
            await context.abort(grpc.StatusCode.INTERNAL, internal_error(log, f"the call {method}"))

    return guarded


class InternalErrors(grpc.aio.ServerInterceptor):
    """Wraps the gateway's stream-stream (Tunnel.Connect) and unary (FleetControl) calls."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(_guard_stream(handler.stream_stream, method), **codec)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_guard_unary(handler.unary_unary, method), **codec)
        return handler
