//! The memory budget for request bodies ([`Budget`], `--max-pending` bytes), shared by every
//! connection and file of a collator: a body is read only once its length is reserved, and
//! the reservation ([`Permit`]) is held until its write is done.

use std::sync::{Arc, Mutex};

use event_listener::Event;

/// The memory budget for request bodies, shared by every connection: `--max-pending` bytes.
/// A body is read only once its length is reserved here, and the reservation is held until
/// its write is done, so bodies being read, queued and written never take more than the
/// budget (one request may exceed it alone, so that it is not refused forever).
#[derive(Debug)]
pub struct Budget {
    used: Mutex<u64>,
    cap: u64,
    freed: Event,
}

/// A reservation in the [`Budget`], released when dropped.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Budget {
    /// A budget of `cap` bytes.
    pub fn new(cap: u64) -> Arc<Budget> {
        Arc::new(Budget {
            used: Mutex::new(0),
            cap,
            freed: Event::new(),
        })
    }

    /// Reserves `bytes`, waiting until they fit (or nothing else is reserved).
    pub async fn acquire(self: &Arc<Budget>, bytes: u64) -> Permit {
        loop {
            let listener = self.freed.listen();
            {
                let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
                if *used == 0 || *used + bytes <= self.cap {
                    *used += bytes;
                    return Permit {
                        budget: self.clone(),
                        bytes,
                    };
                }
            }
            listener.await;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|p| p.into_inner());
        *used -= self.bytes;
        drop(used);
        self.budget.freed.notify(usize::MAX);
    }
}
