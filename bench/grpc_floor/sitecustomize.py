"""The node's gRPC door with nothing behind it, for ``bench/infer_load.py --grpc-floor`` only.

On ``PYTHONPATH`` with ``SIGNALBOX_BENCH_GRPC_FLOOR=1``, Python imports this module at
start-up and it replaces ``InferService.Infer`` with a method that parses the request as the
real one does and answers an empty ``InferResponse``: no authentication, routing, upstream
call or evidence. The node's CPU per request then is what grpc.aio, the event loop and the
door's parse cost on this machine, in the same minutes as the real path. Never on a real
node's path: it answers without checking who calls and writes no evidence.
"""

from __future__ import annotations

import os

if os.environ.get("SIGNALBOX_BENCH_GRPC_FLOOR") == "1":
    from typing import Any

    from dataplane.api import service
    from signalbox.api.infer.v1 import infer_pb2

    _EMPTY = infer_pb2.InferResponse()

    async def _floor(self: Any, request: bytes, context: Any) -> infer_pb2.InferResponse:
        service._parse(infer_pb2.InferRequest, request, context, service.edge.decode_chat)
        return _EMPTY

    service.InferService.Infer = _floor  # type: ignore[method-assign]
