"""Types of `block_epp_front`, the endpoint picker's compiled gRPC front (src/lib.rs)."""

class Front:
    """tonic serving Envoy's ext_proc stream and gRPC health on its own thread; the ext_proc
    messages go to Python as bytes, in batches."""

    def __init__(
        self,
        host: str,
        port: int,
        health_services: list[str],
        max_message_bytes: int,
        max_pending: int = 4096,
        threads: int = 1,
    ) -> None: ...
    def start(self) -> int:
        """Bind HOST:PORT and serve; the port bound (OSError if it cannot listen)."""
    def fileno(self) -> int:
        """Readable when `drain()` has something (for `loop.add_reader`)."""
    def drain(self) -> list[tuple[int, bytes | None]]:
        """`(stream_id, message)` in order; `(stream_id, None)` when a stream ended."""
    def reply(self, stream_id: int, data: bytes) -> bool:
        """Queue an answer on the stream; False if the stream is gone."""
    def close_stream(self, stream_id: int, error: str | None = None) -> None:
        """End the stream's response after its queued answers: OK, or INTERNAL `error`."""
    def set_serving(self, serving: bool) -> None:
        """SERVING or NOT_SERVING for every health service name."""
    def stop(self, grace_s: float) -> None:
        """GOAWAY and stop accepting; streams in progress have `grace_s`. Returns at once."""
    def join(self) -> None:
        """Block (without the GIL) until the server thread has ended."""
    @property
    def num_streams(self) -> int:
        """Streams whose gRPC response is still open."""
    @property
    def error(self) -> str | None:
        """The server's error, if it stopped on one."""
