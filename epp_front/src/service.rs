//! The gRPC services, by path: Envoy's ext_proc `Process` (bidirectional, messages passed
//! through as bytes for Python to parse) and `grpc.health.v1.Health` (`Check`, `Watch`; its
//! two tiny messages encoded here). Anything else is UNIMPLEMENTED.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::Grpc;
use tonic::{Request, Response, Status, Streaming};
use tower_service::Service;

use crate::handoff::{Handoff, Reply, StreamState};

const PROCESS: &str = "/envoy.service.ext_proc.v3.ExternalProcessor/Process";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";

// grpc.health.v1.HealthCheckResponse.ServingStatus
const SERVING: u8 = 1;
const NOT_SERVING: u8 = 2;
const SERVICE_UNKNOWN: u8 = 3;

/// Messages as they are: bytes in, bytes out.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The server's one service: dispatch by path.
#[derive(Clone)]
pub struct Front {
    handoff: Arc<Handoff>,
    health: Health,
    max_message_bytes: usize,
}

impl Front {
    pub fn new(
        handoff: Arc<Handoff>,
        names: Arc<[String]>,
        serving: watch::Receiver<bool>,
        max_message_bytes: usize,
    ) -> Self {
        Self { handoff, health: Health { names, serving }, max_message_bytes }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<http::Request<Body>> for Front {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec)
                .max_decoding_message_size(me.max_message_bytes)
                .max_encoding_message_size(me.max_message_bytes);
            let response = match req.uri().path() {
                PROCESS => grpc.streaming(Process(me.handoff), req).await,
                HEALTH_CHECK => grpc.unary(me.health, req).await,
                HEALTH_WATCH => grpc.server_streaming(HealthWatch(me.health), req).await,
                _ => Status::unimplemented("").into_http(),
            };
            Ok(response)
        })
    }
}

// ext_proc.

struct Process(Arc<Handoff>);

impl Service<Request<Streaming<Bytes>>> for Process {
    type Response = Response<Outgoing>;
    type Error = Status;
    type Future = BoxFuture<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        let handoff = self.0.clone();
        let (id, replies, state) = handoff.open();
        let reader =
            tokio::spawn(read_requests(handoff.clone(), id, state.clone(), request.into_inner()));
        let mut outgoing =
            Outgoing { replies, first: None, id, state, handoff, reader: reader.abort_handle() };
        Box::pin(async move {
            // The response's headers wait for its first message: they leave in one write, and
            // Envoy wakes once for both. An error first is the whole answer (trailers only).
            match outgoing.replies.recv().await {
                Some(Ok(first)) => outgoing.first = Some(first),
                Some(Err(status)) => return Err(status),
                None => {}
            }
            Ok(Response::new(outgoing))
        })
    }
}

/// Hands a stream's messages to Python, then its end (half-close, or the stream's error,
/// which also ends the response).
async fn read_requests(
    handoff: Arc<Handoff>,
    id: u64,
    state: Arc<StreamState>,
    mut incoming: Streaming<Bytes>,
) {
    loop {
        match incoming.message().await {
            Ok(Some(message)) => {
                if !handoff.credit().await || !handoff.push_message(id, message, &state) {
                    break;
                }
            }
            Ok(None) => break,
            // Undecodable (too large, say) or reset: the response ends with the error.
            Err(status) => {
                handoff.fail(id, status);
                break;
            }
        }
    }
    handoff.push_end(id, &state);
}

/// A stream's response: Python's answers, in order, until Python closes it.
pub struct Outgoing {
    replies: mpsc::Receiver<Reply>,
    first: Option<Bytes>,
    id: u64,
    state: Arc<StreamState>,
    handoff: Arc<Handoff>,
    reader: AbortHandle,
}

impl Stream for Outgoing {
    type Item = Reply;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Reply>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        self.replies.poll_recv(cx)
    }
}

impl Drop for Outgoing {
    /// Finished, reset by the peer, or dropped at shutdown: Python hears of the end (once).
    fn drop(&mut self) {
        self.reader.abort();
        self.handoff.forget(self.id);
        self.handoff.push_end(self.id, &self.state);
    }
}

// Health.

#[derive(Clone)]
struct Health {
    names: Arc<[String]>,
    serving: watch::Receiver<bool>,
}

impl Health {
    fn knows(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

fn status_message(status: u8) -> Bytes {
    // HealthCheckResponse { status = 1 (varint) }
    Bytes::from(vec![0x08, status])
}

fn serving_status(serving: bool) -> u8 {
    if serving {
        SERVING
    } else {
        NOT_SERVING
    }
}

impl Service<Request<Bytes>> for Health {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let answer = service_name(request.get_ref()).and_then(|name| {
            if self.knows(&name) {
                let status = serving_status(*self.serving.borrow());
                Ok(Response::new(status_message(status)))
            } else {
                Err(Status::not_found("unknown service"))
            }
        });
        ready(answer)
    }
}

type Statuses = Pin<Box<dyn Stream<Item = Reply> + Send>>;

struct HealthWatch(Health);

impl Service<Request<Bytes>> for HealthWatch {
    type Response = Response<Statuses>;
    type Error = Status;
    type Future = Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let answer = service_name(request.get_ref()).map(|name| {
            let statuses: Statuses = if self.0.knows(&name) {
                // The current status, then each change.
                let changes = WatchStream::new(self.0.serving.clone());
                Box::pin(changes.map(|s| Ok(status_message(serving_status(s)))))
            } else {
                // As grpc's own health servicer: unknown, and the stream stays open.
                let unknown = tokio_stream::once(Ok(status_message(SERVICE_UNKNOWN)));
                Box::pin(unknown.chain(tokio_stream::pending()))
            };
            Response::new(statuses)
        });
        ready(answer)
    }
}

/// `HealthCheckRequest.service` (field 1, a string) from its encoding.
fn service_name(mut buf: &[u8]) -> Result<String, Status> {
    let bad = || Status::invalid_argument("malformed HealthCheckRequest");
    let mut name = String::new();
    while buf.has_remaining() {
        let key = varint(&mut buf).ok_or_else(bad)?;
        let skip = match key & 7 {
            0 => {
                varint(&mut buf).ok_or_else(bad)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = usize::try_from(varint(&mut buf).ok_or_else(bad)?).map_err(|_| bad())?;
                if len > buf.len() {
                    return Err(bad());
                }
                if key >> 3 == 1 {
                    name = String::from_utf8(buf[..len].to_vec()).map_err(|_| bad())?;
                }
                len
            }
            _ => return Err(bad()),
        };
        if skip > buf.len() {
            return Err(bad());
        }
        buf.advance(skip);
    }
    Ok(name)
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_service_name() {
        assert_eq!(service_name(b"").unwrap(), "");
        assert_eq!(service_name(b"\x0a\x08liveness").unwrap(), "liveness");
        // Unknown fields are skipped.
        assert_eq!(service_name(b"\x10\x96\x01\x0a\x01x\x1d\0\0\0\0").unwrap(), "x");
        assert!(service_name(b"\x0a\x09liveness").is_err());
        assert!(service_name(b"\x0a").is_err());
    }
}
