"""A picker that decides nothing, for bench/envoy_epp.py: the floor of a Python ext_proc picker.

    python bench/_noop_picker.py PORT IP:PORT[,IP:PORT...] [--native]

The same server as `block epp` (grpc.aio on asyncio's own loop, the same server options), the
same conversation with Envoy (request headers, the buffered body, response headers; the
stream's end) and an answer of the same shape (`x-gateway-destination-endpoint` as a header
and in `envoy.lb` metadata, round-robin over the given endpoints), built once at start. What
`block epp` costs beyond this is its own work (parsing, routing, accounting, metrics).

`--native`: the same on the compiled front (`block_epp_front`, as `epp_native` drives it): each
message parsed in Python and answered with its answer's bytes, no task per stream, no policy:
the floor of the native front.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from google.protobuf import struct_pb2

DESTINATION = "x-gateway-destination-endpoint"
HEADERS = ext_proc.ProcessingResponse(request_headers=ext_proc.HeadersResponse())
RESPONSE_HEADERS = ext_proc.ProcessingResponse(response_headers=ext_proc.HeadersResponse())
OTHER = {
    "response_body": ext_proc.ProcessingResponse(response_body=ext_proc.BodyResponse()),
    "request_trailers": ext_proc.ProcessingResponse(request_trailers=ext_proc.TrailersResponse()),
    "response_trailers": ext_proc.ProcessingResponse(response_trailers=ext_proc.TrailersResponse()),
}


def destination(address: str) -> ext_proc.ProcessingResponse:
    header = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=DESTINATION, raw_value=address.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
    metadata = struct_pb2.Struct()
    metadata.get_or_create_struct("envoy.lb")[DESTINATION] = address
    mutation = ext_proc.HeaderMutation(set_headers=[header])
    return ext_proc.ProcessingResponse(
        request_body=ext_proc.BodyResponse(
            response=ext_proc.CommonResponse(header_mutation=mutation)
        ),
        dynamic_metadata=metadata,
    )


class NoopPicker(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, addresses: list[str]) -> None:
        self._answers = itertools.cycle([destination(a) for a in addresses])

    async def Process(
        self, request_iterator: AsyncIterator[ext_proc.ProcessingRequest], context: Any
    ) -> AsyncIterator[ext_proc.ProcessingResponse]:
        async for message in request_iterator:
            kind = message.WhichOneof("request")
            if kind == "request_headers":
                yield HEADERS
            elif kind == "request_body":
                yield next(self._answers)
            elif kind == "response_headers":
                yield RESPONSE_HEADERS
            else:
                yield OTHER[kind]


async def serve_native(port: int, addresses: list[str]) -> None:
    import block_epp_front

    front = block_epp_front.Front("127.0.0.1", port, [""], 9 << 20)
    front.start()
    front.set_serving(True)
    bodies = itertools.cycle([destination(a).SerializeToString() for a in addresses])
    fixed = {
        "request_headers": HEADERS.SerializeToString(),
        "response_headers": RESPONSE_HEADERS.SerializeToString(),
        **{k: v.SerializeToString() for k, v in OTHER.items()},
    }
    parse = ext_proc.ProcessingRequest.FromString

    def wake() -> None:
        for stream_id, data in front.drain():
            if data is None:
                front.close_stream(stream_id)
                continue
            kind = parse(data).WhichOneof("request")
            front.reply(stream_id, next(bodies) if kind == "request_body" else fixed[kind])

    asyncio.get_running_loop().add_reader(front.fileno(), wake)
    await asyncio.Event().wait()


async def serve(port: int, addresses: list[str]) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 9 << 20),
            ("grpc.max_send_message_length", 9 << 20),
            ("grpc.so_reuseport", 0),
        ]
    )
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(NoopPicker(addresses), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    run = serve_native if "--native" in sys.argv[3:] else serve
    asyncio.run(run(int(sys.argv[1]), sys.argv[2].split(",")))
