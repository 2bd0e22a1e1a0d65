"""The endpoint picker behind its compiled gRPC front (`block_epp_front`, the Rust crate in
`epp_front/`; `pip install ./epp_front`).

The front (tonic, on a thread of its own) serves Envoy's ext_proc streams and gRPC health; the
decision stays here, in the same `EndpointPicker.Process` the grpc.aio server runs. Per stream:

    front -> loop     `(stream_id, bytes)` per message, `(stream_id, None)` at its end
                      (Envoy half-closed or reset it, or the front stopped), batched: one
                      wake-up of the loop (`add_reader` on the front's descriptor) takes every
                      message that arrived meanwhile
    loop              the first message starts a task running `Process` over an async
                      iterator of that stream's messages, parsed (upb) as it reads them
    loop -> front     each answer, serialized, into the stream's response (`reply`), in
                      order; when `Process` is over, `close_stream` ends the response (OK, or
                      INTERNAL if the picker raised)

`Process`'s `finally` runs however a stream ends (its tickets are released). Without the
native module `start_native` is a `ConfigError`, and `start_picker` serves on grpc.aio
(`epp_serving.start`, which needs nothing of this).
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import logging
from collections.abc import AsyncGenerator
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, cast

from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

from block.errors import ConfigError
from block.scheduler import epp_serving
from block.scheduler.epp import EndpointPicker
from block.scheduler.epp_serving import HEALTH_SERVICES, MESSAGE_HEADROOM, start_admin
from block.scheduler.service import SETTINGS

if TYPE_CHECKING:
    import block_epp_front

logger = logging.getLogger(__name__)
_parse = ext_proc.ProcessingRequest.FromString


class Picker(Protocol):
    """A started picker, whichever front serves it (`epp_serving.PickerServer`, `NativePicker`)."""

    host: str
    grpc_port: int
    admin_port: int

    @property
    def admin_url(self) -> str: ...

    @property
    def grpc_target(self) -> str: ...

    async def close(self, grace_s: float = 1.0) -> None: ...


def native_module() -> ModuleType | None:
    """`block_epp_front`, or None where it was not built."""
    try:
        return importlib.import_module("block_epp_front")
    except ImportError:
        return None


class _Requests:
    """One stream's ext_proc messages, as the async iterator `Process` reads: bytes queued by
    the loop's wake-ups, parsed when read; over when the stream ended and all were read."""

    __slots__ = ("_ended", "_items", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False

    def push(self, data: bytes) -> None:
        self._items.append(data)
        self._wake()

    def end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> ext_proc.ProcessingRequest:
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return _parse(self._items.popleft())


class NativePicker:
    """A started picker on the compiled front: its ports, `set_serving`, and `close()` (the
    same surface as `epp_serving.PickerServer`)."""

    def __init__(
        self,
        front: block_epp_front.Front,
        picker: EndpointPicker,
        runner: web.AppRunner,
        host: str,
        grpc_port: int,
        admin_port: int,
    ) -> None:
        self.front = front
        self.runner = runner
        self.host = host
        self.grpc_port = grpc_port
        self.admin_port = admin_port
        self._picker = picker
        self._loop = asyncio.get_running_loop()
        self._fd = front.fileno()
        self._streams: dict[int, _Requests] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._closed = False
        self._stopping = False

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def num_streams(self) -> int:
        """ext_proc streams being served (Python's side)."""
        return len(self._tasks)

    def set_serving(self, serving: bool) -> None:
        """SERVING or NOT_SERVING for every gRPC health service name."""
        self.front.set_serving(serving)

    def listen(self) -> None:
        self._loop.add_reader(self._fd, self._wake)

    def _wake(self) -> None:
        """Whatever the front handed over since the last wake-up, in order."""
        streams = self._streams
        for stream_id, data in self.front.drain():
            requests = streams.get(stream_id)
            if data is None:
                if requests is not None:
                    requests.end()
            elif requests is not None:
                requests.push(data)
            elif not self._closed:
                requests = streams[stream_id] = _Requests(self._loop)
                requests.push(data)
                self._tasks[stream_id] = self._loop.create_task(self._serve(stream_id, requests))

    async def _serve(self, stream_id: int, requests: _Requests) -> None:
        """One ext_proc stream through `EndpointPicker.Process`, its answers to the front."""
        front = self.front
        error: str | None = None
        context: Any = None  # Process never reads its gRPC context
        answers = cast(
            "AsyncGenerator[ext_proc.ProcessingResponse, None]",
            self._picker.Process(requests, context),
        )
        try:
            async for answer in answers:
                front.reply(stream_id, answer.SerializeToString())
        except asyncio.CancelledError:
            error = "the endpoint picker stopped"
            raise
        except Exception:
            logger.exception("ext_proc stream %d failed", stream_id)
            error = "the endpoint picker failed"
        finally:
            del self._streams[stream_id], self._tasks[stream_id]
            front.close_stream(stream_id, error)
            await answers.aclose()  # a no-op: its `finally` ran when it ended

    async def close(self, grace_s: float = 1.0) -> None:
        """Say NOT_SERVING, let streams in progress finish (bounded), then clean up."""
        if self._stopping:
            return
        self._stopping = True
        self.front.stop(grace_s)  # NOT_SERVING, GOAWAY, no new connections
        await asyncio.to_thread(self.front.join)  # the loop serves the last streams meanwhile
        if self.front.error:
            logger.warning("the ext_proc front stopped on an error: %s", self.front.error)
        self._closed = True
        self._wake()  # the ends of streams the front dropped
        self._loop.remove_reader(self._fd)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.runner.cleanup()


async def start_native(
    app: web.Application,
    host: str = "127.0.0.1",
    grpc_port: int = 0,
    admin_port: int = 0,
    threads: int = 1,
) -> NativePicker:
    """Serve the picker for `app` (built by `create_app(..., inference=False)`) on the
    compiled front, the admin app beside it, as `epp_serving.start` does on grpc.aio.
    `threads`: the front's tokio threads."""
    native = native_module()
    if native is None:
        raise ConfigError(
            "the native ext_proc front is not installed: pip install ./epp_front (needs Rust), "
            "or serve on grpc.aio"
        )
    runner, admin_bound = await start_admin(app, host, admin_port)
    try:
        limit = app[SETTINGS].max_body_bytes + MESSAGE_HEADROOM
        front: block_epp_front.Front = native.Front(
            host, grpc_port, list(HEALTH_SERVICES), limit, threads=threads
        )
        grpc_bound = front.start()
        picker = NativePicker(front, EndpointPicker(app), runner, host, grpc_bound, admin_bound)
        picker.listen()
    except BaseException:
        await runner.cleanup()
        raise
    # Discovery has run once (the app's start-up awaits it): the picker knows its pool.
    picker.set_serving(True)
    return picker


async def start_picker(
    app: web.Application,
    host: str = "127.0.0.1",
    grpc_port: int = 0,
    admin_port: int = 0,
    front: str = "auto",
) -> Picker:
    """The picker on the native front (`front` "native", or "auto" when it is installed),
    else on grpc.aio ("grpcio")."""
    built = native_module() is not None
    if front == "native" and not built:
        logger.warning(
            "the native ext_proc front is not installed (pip install ./epp_front); "
            "serving ext_proc on grpc.aio"
        )
    if front != "grpcio" and built:
        return await start_native(app, host, grpc_port, admin_port)
    return await epp_serving.start(app, host, grpc_port, admin_port)
