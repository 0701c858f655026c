//! A drain's flow control: how many batches the worker keeps in flight, how many requests each
//! receive asks for, and when it takes no more. No I/O: the worker asks what to start, performs
//! it, and reports how it ended.
//!
//! A batch is one receive (up to `batch_size` requests) and the processing of what it brought:
//! checks, signatures, record lines, answers and the batch's delete. Several batches in flight
//! hide the queue's round trips (a batch waits on three of them, one after the other), so the
//! worker is bound by its CPU on a fast queue and by `concurrency × batch_size / round trips` on
//! a slow one. Each request's own actions stay in the order of its disposition.
//!
//! A drain starts with one batch in flight and doubles that each time a batch comes back full,
//! up to `concurrency`: a busy queue reaches it within a few batches, while a quiet one (a
//! service long-polling an empty queue) keeps one receive waiting, not `concurrency` of them.
//!
//! When the queue said how many requests it held before the drain (`expecting`), receives are
//! not started for more than that: with every counted request asked for by a receive in flight,
//! the next one waits until none is, and goes alone. Without the count, the receives in flight
//! when the queue runs dry all come back empty, up to `concurrency` calls wasted per drain. The
//! count is approximate, so it only holds receives back, never ends the drain: a full batch once
//! it is used up shows that requests came in since, and the drain goes on without it. An empty
//! receive ends the drain, but while counted requests remain unreceived, only once a receive
//! started alone after it comes back empty too.

/// Why a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// A receive came back empty: the queue has nothing visible left.
    QueueEmpty,
    /// As many requests as the limit allowed were received.
    LimitReached,
    /// Told to stop (a signal, an error, the signer gone): the batches in hand were finished.
    Stopped,
}

/// The flow control of one drain.
#[derive(Debug, Clone)]
pub struct DrainFlow {
    /// Requests that may still be asked for (the limit minus what receives asked for and got).
    remaining: u64,
    batch_size: u32,
    concurrency: usize,
    /// Batches that may be in flight now: 1 at first, doubled by each full batch.
    window: usize,
    in_flight: usize,
    /// Requests the queue counted before the drain that no receive has asked for yet (`None`:
    /// no count, or one that proved too low).
    unclaimed: Option<u64>,
    /// The batch in flight was started with the count used up (it is then the only one).
    probing: bool,
    /// After an empty receive while counted requests waited: `Some(started)`, whether the one
    /// receive that decides (started alone once the others ended) is out.
    confirming: Option<bool>,
    end: Option<DrainEnd>,
}

impl DrainFlow {
    /// `limit` requests at most (`u64::MAX`: until the queue is empty), receives of up to
    /// `batch_size` (1 to 10, as SQS allows), `concurrency` batches in flight at most (at
    /// least one).
    pub fn new(limit: u64, batch_size: u32, concurrency: usize) -> DrainFlow {
        DrainFlow {
            remaining: limit,
            batch_size: batch_size.clamp(1, 10),
            concurrency: concurrency.max(1),
            window: 1,
            in_flight: 0,
            unclaimed: None,
            probing: false,
            confirming: None,
            end: None,
        }
    }

    /// The queue held about `waiting` requests before the drain (its ApproximateNumberOfMessages):
    /// no more receives are kept in flight than those requests need.
    pub fn expecting(mut self, waiting: u64) -> DrainFlow {
        self.unclaimed = Some(waiting);
        self
    }

    /// The next batch to start, as the number of requests its receive asks for; `None` while
    /// the batches in flight fill the window, or once no batch may start.
    pub fn next_batch(&mut self) -> Option<u32> {
        if self.end.is_some() || self.in_flight >= self.window {
            return None;
        }
        if self.remaining == 0 {
            // What is in flight may still give back requests it did not get.
            return None;
        }
        if self.unclaimed == Some(0) && self.in_flight > 0 {
            // Every counted request is asked for: one more receive would most likely be empty.
            return None;
        }
        let asked = self.remaining.min(u64::from(self.batch_size)) as u32;
        self.remaining -= u64::from(asked);
        self.in_flight += 1;
        if let Some(started) = &mut self.confirming {
            *started = true;
        }
        if let Some(unclaimed) = &mut self.unclaimed {
            self.probing = *unclaimed == 0;
            *unclaimed = unclaimed.saturating_sub(u64::from(asked));
        }
        Some(asked)
    }

    /// A batch that asked for `asked` requests ended, having received `received` of them
    /// (processed, or handed back when it failed).
    pub fn batch_ended(&mut self, asked: u32, received: usize) {
        debug_assert!(self.in_flight > 0, "a batch ended that was never started");
        self.in_flight = self.in_flight.saturating_sub(1);
        let received = (received as u64).min(u64::from(asked));
        self.remaining += u64::from(asked) - received;
        // Counted requests that no receive has asked for, apart from what this one hands back.
        let counted_waiting = self.unclaimed.is_some_and(|n| n > 0);
        if std::mem::take(&mut self.probing) && received == u64::from(asked) {
            // Requests came in since the count: it no longer says how many wait.
            self.unclaimed = None;
        } else if let Some(unclaimed) = &mut self.unclaimed {
            // Counted, but not received by this batch: another receive may still find them.
            *unclaimed += u64::from(asked) - received;
        }
        if received == u64::from(asked) {
            // The queue had more than was asked for: more in flight would have found work too.
            self.window = (self.window * 2).min(self.concurrency);
        }
        if received > 0 {
            self.confirming = None;
        } else if self.end.is_none() {
            match self.confirming {
                // Started before the first empty one: its answer decides nothing.
                Some(false) => {}
                // While the count says requests wait that no receive got, an empty receive may
                // be the server's (seen on a loaded local server with 47,000 requests waiting):
                // one more receive, started alone once the others ended, decides.
                None if counted_waiting => {
                    self.confirming = Some(false);
                    self.window = 1;
                }
                _ => self.end = Some(DrainEnd::QueueEmpty),
            }
        }
    }

    /// Takes no more batches; those in flight finish.
    pub fn stop(&mut self) {
        self.end.get_or_insert(DrainEnd::Stopped);
    }

    /// Whether the drain is over: no batch in flight, and none may start.
    pub fn is_over(&mut self) -> bool {
        if self.end.is_none() && self.remaining == 0 && self.in_flight == 0 {
            self.end = Some(DrainEnd::LimitReached);
        }
        self.end.is_some() && self.in_flight == 0
    }

    /// Why the drain ended (once it is over).
    pub fn end(&self) -> Option<DrainEnd> {
        self.end
    }

    /// Batches in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}
