//! Write coalescing. While a task handles a batch of publishes (every frame
//! of one read of a publisher's socket), the sinks it delivers to queue
//! frames instead of writing each at once, and each is flushed once when
//! the batch ends: one vectored write per subscriber per batch instead of
//! one `send` per message per subscriber. Outside a batch, or for a batch of
//! one message, a frame offered to an idle socket is still written at once.
//!
//! A batch is scoped to one poll of the task that handles it
//! ([`scope`]): it can never stay open while that task waits, so no other
//! task's deliveries are ever deferred by it.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// A sink that deferred a frame and must be flushed when the batch ends.
pub trait Deferred: Send + Sync {
    /// Writes what was deferred, as far as the socket takes it now, and
    /// hands the rest to the connection's own task.
    fn flush_deferred(&self);
}

#[derive(Default)]
struct Batch {
    open: bool,
    touched: Vec<Arc<dyn Deferred>>,
}

thread_local! {
    static BATCH: RefCell<Batch> = RefCell::new(Batch::default());
    /// Apart from the rest: every offer to an idle socket reads it.
    static DEFER: Cell<bool> = const { Cell::new(false) };
}

/// Closes the batch even if the scoped code panics, so a deferred frame is
/// never stranded on a socket nobody wakes.
struct Close;

impl Drop for Close {
    fn drop(&mut self) {
        let touched = BATCH.with_borrow_mut(|b| {
            b.open = false;
            DEFER.set(false);
            std::mem::take(&mut b.touched)
        });
        for sink in &touched {
            sink.flush_deferred();
        }
        // Keep the list's allocation for the next batch on this thread.
        let mut touched = touched;
        touched.clear();
        BATCH.with_borrow_mut(|b| {
            if b.touched.capacity() < touched.capacity() {
                b.touched = touched;
            }
        });
    }
}

/// Runs `f` as one batch: deliveries made while it [`defer`]s are queued
/// and each touched sink is flushed once when `f` returns. A scope opened
/// inside another joins it.
pub fn scope<R>(f: impl FnOnce() -> R) -> R {
    let outer = BATCH.with_borrow_mut(|b| std::mem::replace(&mut b.open, true));
    if outer {
        return f();
    }
    let _close = Close;
    f()
}

/// Inside a [`scope`]: more frames are coming in this batch, so from now on
/// until the scope ends, frames for idle sockets are queued, not written.
/// Outside a scope it does nothing.
pub fn defer() {
    DEFER.set(BATCH.with_borrow(|b| b.open));
}

/// Whether a frame offered now should be queued and flushed at the end of
/// the batch.
pub fn deferring() -> bool {
    DEFER.get()
}

/// Registers a sink that deferred a frame to an empty queue.
pub fn touch(sink: Arc<dyn Deferred>) {
    BATCH.with_borrow_mut(|b| b.touched.push(sink));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Deferred for Counter {
        fn flush_deferred(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn defers_only_inside_a_scope_and_flushes_once_at_its_end() {
        defer();
        assert!(!deferring(), "no batch is open");
        let sink = Arc::new(Counter::default());
        scope(|| {
            assert!(!deferring(), "a batch starts writing at once");
            defer();
            assert!(deferring());
            touch(sink.clone());
            scope(|| {
                assert!(deferring(), "an inner scope joins the outer one");
                touch(sink.clone());
            });
            assert_eq!(sink.0.load(Ordering::Relaxed), 0, "nothing flushed mid-batch");
        });
        assert_eq!(sink.0.load(Ordering::Relaxed), 2);
        assert!(!deferring());
    }

    #[test]
    fn a_panicking_batch_still_flushes() {
        let sink = Arc::new(Counter::default());
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scope(|| {
                defer();
                touch(sink.clone());
                panic!("handler bug");
            })
        }));
        assert!(caught.is_err());
        assert_eq!(sink.0.load(Ordering::Relaxed), 1);
        assert!(!deferring());
    }
}
