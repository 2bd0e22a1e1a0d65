//! The handoff between tokio's threads and Python's event loop.
//!
//! Inbound, every ext_proc message (and every stream's end) becomes an [`Event`] in one queue.
//! Python's loop is woken by a byte on a socket pair whose other end it watches
//! (`loop.add_reader(front.fileno(), ...)`), once per batch: when a tokio thread is about to
//! park ([`Handoff::signal`], its `on_thread_park` hook), or as soon as [`WAKE_BATCH`] events
//! wait. So a tokio thread finishes its turn before Python runs (on a shared core, no
//! preemption ping-pong), one wake-up takes everything that turn brought, and no tokio thread
//! ever takes the GIL. [`Handoff::drain`] reads the wake-up bytes *before* taking the queue, so
//! an event pushed meanwhile either comes in this batch or is signalled again. Credits (a
//! semaphore) bound the events waiting for Python: a stream's reader waits for one before it
//! queues a message.
//!
//! Outbound, each stream has a bounded channel to its gRPC response; Python's answers go into
//! it in order (`reply`), and closing it (`close`) ends the response with OK, or with an error.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tonic::Status;

/// What a stream's gRPC response carries: a message, or the error that ends it.
pub type Reply = Result<Bytes, Status>;

/// Events that wake Python at once, without waiting for the tokio thread to park.
const WAKE_BATCH: usize = 64;

/// Answers a stream may have waiting to be written (ext_proc answers one message with one
/// message, and a request has at most six).
const REPLIES_PER_STREAM: usize = 16;

/// A stream's end, as both sides see it.
#[derive(Default)]
pub struct StreamState {
    /// Its end has been queued for Python (half-close, reset, shutdown); under the queue's lock.
    ended: AtomicBool,
    /// Python closed it: nothing more of it is queued or handed over.
    closed: AtomicBool,
}

/// One message of a stream (`data`), or its end (`None`).
pub struct Event {
    pub id: u64,
    pub data: Option<Bytes>,
    state: Arc<StreamState>,
}

struct Open {
    replies: mpsc::Sender<Reply>,
    state: Arc<StreamState>,
}

#[derive(Default)]
struct Queue {
    events: Vec<Event>,
    /// A wake-up byte was written for what the queue holds.
    signalled: bool,
}

impl Queue {
    /// Queues the event; whether Python must be woken now.
    fn push(&mut self, event: Event) -> bool {
        self.events.push(event);
        let now = !self.signalled && self.events.len() >= WAKE_BATCH;
        self.signalled |= now;
        now
    }
}

pub struct Handoff {
    queue: Mutex<Queue>,
    wake_tx: UnixStream,
    wake_rx: UnixStream,
    credits: Semaphore,
    streams: Mutex<HashMap<u64, Open>>,
    next_id: AtomicU64,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Handoff {
    pub fn new(max_pending: usize) -> std::io::Result<Self> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        Ok(Self {
            queue: Mutex::new(Queue { events: Vec::with_capacity(256), signalled: false }),
            wake_tx,
            wake_rx,
            credits: Semaphore::new(max_pending.max(1)),
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    /// The descriptor Python's loop watches for wake-ups.
    pub fn fileno(&self) -> RawFd {
        self.wake_rx.as_raw_fd()
    }

    /// A new stream: its id, where its answers arrive, and its state.
    pub fn open(&self) -> (u64, mpsc::Receiver<Reply>, Arc<StreamState>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (replies, rx) = mpsc::channel(REPLIES_PER_STREAM);
        let state = Arc::new(StreamState::default());
        locked(&self.streams).insert(id, Open { replies, state: state.clone() });
        (id, rx, state)
    }

    /// Waits for room in the queue (the bound on messages Python has not taken yet).
    pub async fn credit(&self) -> bool {
        match self.credits.acquire().await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Queues a message (holding a credit); false once the stream is over for Python.
    pub fn push_message(&self, id: u64, data: Bytes, state: &Arc<StreamState>) -> bool {
        let mut queue = locked(&self.queue);
        if state.ended.load(Ordering::Relaxed) || state.closed.load(Ordering::Relaxed) {
            drop(queue);
            self.credits.add_permits(1);
            return false;
        }
        let now = queue.push(Event { id, data: Some(data), state: state.clone() });
        drop(queue);
        if now {
            self.wake();
        }
        true
    }

    /// Queues the stream's end, once (whoever sees it first: the reader or the response).
    pub fn push_end(&self, id: u64, state: &Arc<StreamState>) {
        let mut queue = locked(&self.queue);
        if state.ended.swap(true, Ordering::Relaxed) || state.closed.load(Ordering::Relaxed) {
            return;
        }
        let now = queue.push(Event { id, data: None, state: state.clone() });
        drop(queue);
        if now {
            self.wake();
        }
    }

    /// Wakes Python for whatever waits unsignalled: before a tokio thread parks, and once the
    /// runtime is gone.
    pub fn signal(&self) {
        let mut queue = locked(&self.queue);
        if queue.signalled || queue.events.is_empty() {
            return;
        }
        queue.signalled = true;
        drop(queue);
        self.wake();
    }

    fn wake(&self) {
        // WouldBlock: the socket already holds unread wake-ups; Python will drain.
        let _ = (&self.wake_tx).write(&[1]);
    }

    /// Everything queued, in order, less the streams Python has closed.
    pub fn drain(&self) -> Vec<Event> {
        let mut sink = [0u8; 64];
        loop {
            match (&self.wake_rx).read(&mut sink) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break, // WouldBlock: nothing left
            }
        }
        let batch = {
            let mut queue = locked(&self.queue);
            queue.signalled = false;
            std::mem::take(&mut queue.events)
        };
        let messages = batch.iter().filter(|e| e.data.is_some()).count();
        if messages > 0 {
            self.credits.add_permits(messages);
        }
        batch.into_iter().filter(|e| !e.state.closed.load(Ordering::Relaxed)).collect()
    }

    /// Queues Python's answer on the stream's response; false if the stream is gone or full.
    pub fn reply(&self, id: u64, data: Bytes) -> bool {
        match locked(&self.streams).get(&id) {
            Some(open) => open.replies.try_send(Ok(data)).is_ok(),
            None => false,
        }
    }

    /// Python is done with the stream: its response ends after the answers already queued
    /// (with `error` as an INTERNAL status, if given), and nothing more of it is handed over.
    pub fn close(&self, id: u64, error: Option<String>) {
        let open = locked(&self.streams).remove(&id);
        if let Some(open) = open {
            {
                let _queue = locked(&self.queue);
                open.state.closed.store(true, Ordering::Relaxed);
            }
            if let Some(message) = error {
                let _ = open.replies.try_send(Err(Status::internal(message)));
            }
        }
    }

    /// The request stream failed: its response ends with `status`, before anything queued
    /// after it.
    pub fn fail(&self, id: u64, status: Status) {
        if let Some(open) = locked(&self.streams).get(&id) {
            let _ = open.replies.try_send(Err(status));
        }
    }

    /// The gRPC response is over (finished, reset or dropped at shutdown).
    pub fn forget(&self, id: u64) {
        locked(&self.streams).remove(&id);
    }

    /// Streams whose response is still open.
    pub fn num_streams(&self) -> usize {
        locked(&self.streams).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending_wakeups(h: &Handoff) -> usize {
        let mut buf = [0u8; 256];
        (&h.wake_rx).read(&mut buf).unwrap_or(0)
    }

    #[test]
    fn a_batch_wakes_python_once_when_signalled() {
        let h = Handoff::new(8).unwrap();
        let (a, _rx_a, sa) = h.open();
        let (b, _rx_b, sb) = h.open();
        assert!(h.push_message(a, Bytes::from_static(b"1"), &sa));
        assert!(h.push_message(b, Bytes::from_static(b"2"), &sb));
        h.push_end(a, &sa);
        h.push_end(a, &sa); // once
        assert_eq!(pending_wakeups(&h), 0); // nothing until the tokio thread parks
        h.signal();
        h.signal();
        assert_eq!(pending_wakeups(&h), 1);
        let got: Vec<_> = h.drain().into_iter().map(|e| (e.id, e.data)).collect();
        assert_eq!(
            got,
            vec![
                (a, Some(Bytes::from_static(b"1"))),
                (b, Some(Bytes::from_static(b"2"))),
                (a, None)
            ]
        );
        h.signal(); // empty: no wake-up
        assert_eq!(pending_wakeups(&h), 0);
        assert!(!h.push_message(a, Bytes::from_static(b"late"), &sa)); // ended
    }

    #[test]
    fn a_full_queue_wakes_python_at_once() {
        let h = Handoff::new(WAKE_BATCH * 2).unwrap();
        let (a, _rx, sa) = h.open();
        for _ in 0..WAKE_BATCH {
            h.push_message(a, Bytes::from_static(b"m"), &sa);
        }
        assert_eq!(pending_wakeups(&h), 1);
        assert_eq!(h.drain().len(), WAKE_BATCH);
    }

    #[test]
    fn replies_go_to_open_streams_in_order_and_closed_streams_are_left_out() {
        let h = Handoff::new(8).unwrap();
        let (a, mut rx, sa) = h.open();
        assert!(h.reply(a, Bytes::from_static(b"x")));
        assert!(h.reply(a, Bytes::from_static(b"y")));
        assert!(!h.reply(a + 100, Bytes::from_static(b"z")));
        h.push_message(a, Bytes::from_static(b"queued"), &sa);
        h.close(a, Some("boom".into()));
        assert!(h.drain().is_empty()); // Python closed it: its queued message is dropped
        assert!(!h.reply(a, Bytes::from_static(b"after")));
        assert_eq!(rx.try_recv().unwrap().unwrap(), Bytes::from_static(b"x"));
        assert_eq!(rx.try_recv().unwrap().unwrap(), Bytes::from_static(b"y"));
        assert_eq!(rx.try_recv().unwrap().unwrap_err().message(), "boom");
        assert!(rx.try_recv().is_err()); // the sender is gone: the response ends
        assert_eq!(h.num_streams(), 0);
    }
}
