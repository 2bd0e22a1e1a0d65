//! `block_epp_front`: the endpoint picker's gRPC server, compiled.
//!
//! tonic serves Envoy's ext_proc stream (`envoy.service.ext_proc.v3.ExternalProcessor/Process`)
//! and gRPC health on its own tokio thread(s). The ext_proc messages are not decoded here:
//! each goes to Python as `(stream_id, bytes)`, a stream's end as `(stream_id, None)`, in
//! batches (`Front.drain`, when `Front.fileno()` is readable); Python answers with
//! `Front.reply(stream_id, bytes)` and ends the stream with `Front.close_stream`. The policy
//! stays in Python (`block.scheduler.epp_native`); this only carries bytes.

mod handoff;
mod service;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use handoff::Handoff;

/// HTTP/2 flow-control windows: an 8 MiB body crosses loopback in a few round trips.
const STREAM_WINDOW_BYTES: u32 = 4 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;
/// After the grace period, streams still open are dropped with the runtime.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

struct Running {
    /// None while serving; the grace period once asked to stop.
    stop: watch::Sender<Option<Duration>>,
    thread: Option<JoinHandle<()>>,
}

/// The compiled front: `start()` binds and serves, `stop(grace_s)` winds it down.
#[pyclass(frozen, module = "block_epp_front")]
struct Front {
    host: String,
    port: u16,
    names: Arc<[String]>,
    max_message_bytes: usize,
    threads: usize,
    handoff: Arc<Handoff>,
    serving: watch::Sender<bool>,
    running: Mutex<Option<Running>>,
    error: Arc<Mutex<Option<String>>>,
}

#[pymethods]
impl Front {
    #[new]
    #[pyo3(signature = (host, port, health_services, max_message_bytes, max_pending = 4096, threads = 1))]
    fn new(
        host: String,
        port: u16,
        health_services: Vec<String>,
        max_message_bytes: usize,
        max_pending: usize,
        threads: usize,
    ) -> PyResult<Self> {
        if threads == 0 {
            return Err(PyValueError::new_err("threads must be at least 1"));
        }
        let handoff = Handoff::new(max_pending)?;
        Ok(Self {
            host,
            port,
            names: health_services.into(),
            max_message_bytes,
            threads,
            handoff: Arc::new(handoff),
            serving: watch::Sender::new(false),
            running: Mutex::new(None),
            error: Arc::new(Mutex::new(None)),
        })
    }

    /// Bind HOST:PORT and serve on a thread of its own; the port bound.
    fn start(&self) -> PyResult<u16> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.is_some() {
            return Err(PyRuntimeError::new_err("the front was started already"));
        }
        let addr = resolve(&self.host, self.port)?;
        let listener = TcpListener::bind(addr).map_err(|e| {
            PyOSError::new_err(format!(
                "cannot listen on {}:{} for gRPC: {e}",
                self.host, self.port
            ))
        })?;
        listener.set_nonblocking(true)?;
        let bound = listener.local_addr()?.port();
        let mut builder = if self.threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(self.threads).thread_name("epp-front-worker");
            b
        };
        let handoff = self.handoff.clone();
        // Python is woken when a turn is over (see handoff.rs).
        let runtime = builder.enable_all().on_thread_park(move || handoff.signal()).build()?;
        let svc = service::Front::new(
            self.handoff.clone(),
            self.names.clone(),
            self.serving.subscribe(),
            self.max_message_bytes,
        );
        let (stop, stopped) = watch::channel(None);
        let error = self.error.clone();
        let handoff = self.handoff.clone();
        let thread = std::thread::Builder::new()
            .name("epp-front".into())
            .spawn(move || serve(runtime, listener, svc, stopped, error, handoff))?;
        *running = Some(Running { stop, thread: Some(thread) });
        Ok(bound)
    }

    /// The descriptor to watch: readable when `drain()` has something.
    fn fileno(&self) -> i32 {
        self.handoff.fileno()
    }

    /// What arrived since the last call, in order: `(stream_id, message bytes)`, and
    /// `(stream_id, None)` when a stream ended (Envoy half-closed it, reset it, or the server
    /// stopped). Streams closed with `close_stream` are left out.
    fn drain<'py>(&self, py: Python<'py>) -> Vec<(u64, Option<Bound<'py, PyBytes>>)> {
        self.handoff
            .drain()
            .into_iter()
            .map(|e| (e.id, e.data.map(|d| PyBytes::new(py, &d))))
            .collect()
    }

    /// Queue an answer on the stream (non-blocking); False if the stream is gone.
    fn reply(&self, stream_id: u64, data: &[u8]) -> bool {
        self.handoff.reply(stream_id, Bytes::copy_from_slice(data))
    }

    /// End the stream's response after the answers queued: OK, or `error` as INTERNAL.
    #[pyo3(signature = (stream_id, error = None))]
    fn close_stream(&self, stream_id: u64, error: Option<String>) {
        self.handoff.close(stream_id, error);
    }

    /// SERVING or NOT_SERVING for every health service name given at construction.
    fn set_serving(&self, serving: bool) {
        self.serving.send_if_modified(|s| std::mem::replace(s, serving) != serving);
    }

    /// Stop accepting and say GOAWAY; streams in progress have `grace_s`, then are dropped
    /// (each one's end is handed to Python). Returns at once: `join()` waits.
    fn stop(&self, grace_s: f64) {
        self.set_serving(false);
        let grace = Duration::try_from_secs_f64(grace_s.max(0.0)).unwrap_or(Duration::MAX);
        if let Some(running) = &*self.running.lock().unwrap_or_else(|e| e.into_inner()) {
            running.stop.send_replace(Some(grace));
        }
    }

    /// Wait (without the GIL) until the server thread has ended.
    fn join(&self, py: Python<'_>) {
        let thread = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .and_then(|r| r.thread.take());
        if let Some(thread) = thread {
            py.detach(move || {
                let _ = thread.join();
            });
        }
    }

    /// Streams whose gRPC response is still open.
    #[getter]
    fn num_streams(&self) -> usize {
        self.handoff.num_streams()
    }

    /// The server's error, if it stopped on one.
    #[getter]
    fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn resolve(host: &str, port: u16) -> PyResult<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .map_err(|e| PyOSError::new_err(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| PyOSError::new_err(format!("{host} has no address")))
}

fn serve(
    runtime: tokio::runtime::Runtime,
    listener: TcpListener,
    svc: service::Front,
    stopped: watch::Receiver<Option<Duration>>,
    error: Arc<Mutex<Option<String>>>,
    handoff: Arc<Handoff>,
) {
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut asked = stopped.clone();
        let signal = async move {
            let _ = asked.wait_for(Option::is_some).await;
        };
        let server = Server::builder()
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .serve_with_incoming_shutdown(svc, incoming, signal);
        let mut asked = stopped;
        // Dropping the stop sender (the Front garbage-collected) stops at once.
        let deadline = async move {
            let grace = asked.wait_for(Option::is_some).await.map(|g| g.unwrap_or_default());
            tokio::time::sleep(grace.unwrap_or_default()).await;
        };
        tokio::select! {
            done = server => done.map_err(|e| std::io::Error::other(e.to_string())),
            () = deadline => Ok(()),
        }
    });
    if let Err(e) = result {
        *error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
    }
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    handoff.signal(); // the ends of the streams the runtime dropped
}

#[pymodule]
fn block_epp_front(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Front>()?;
    Ok(())
}
