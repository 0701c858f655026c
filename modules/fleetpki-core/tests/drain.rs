//! The drain's flow control (`fleetpki_core::drain`): how many batches are in flight, how many
//! requests each asks for, and when the drain takes no more.

use fleetpki_core::drain::{DrainEnd, DrainFlow};

/// Starts batches until the flow gives no more; returns what each asked for.
fn start_all(flow: &mut DrainFlow) -> Vec<u32> {
    std::iter::from_fn(|| flow.next_batch()).collect()
}

/// Ends every batch in flight as full (each received what it asked for).
fn end_full(flow: &mut DrainFlow, started: &[u32]) {
    for asked in started {
        flow.batch_ended(*asked, *asked as usize);
    }
}

#[test]
fn starts_with_one_batch_and_doubles_with_each_full_one_up_to_concurrency() {
    let mut flow = DrainFlow::new(u64::MAX, 10, 4);
    let first = start_all(&mut flow);
    assert_eq!(first, vec![10], "one receive at first");
    end_full(&mut flow, &first);
    let second = start_all(&mut flow);
    assert_eq!(
        second,
        vec![10, 10],
        "a full batch doubles the batches in flight"
    );
    end_full(&mut flow, &second);
    let third = start_all(&mut flow);
    assert_eq!(third, vec![10, 10, 10, 10], "up to concurrency");
    end_full(&mut flow, &third);
    assert_eq!(start_all(&mut flow).len(), 4, "and never past it");
    assert_eq!(flow.in_flight(), 4);
    assert_eq!(
        flow.next_batch(),
        None,
        "a fifth batch while four are in flight"
    );
    flow.batch_ended(10, 10);
    assert_eq!(
        flow.next_batch(),
        Some(10),
        "a slot freed by a full batch is used again"
    );
    assert!(!flow.is_over());
}

#[test]
fn a_quiet_queue_keeps_one_receive_waiting() {
    let mut flow = DrainFlow::new(u64::MAX, 10, 8);
    for _ in 0..5 {
        let started = start_all(&mut flow);
        assert_eq!(started, vec![10]);
        flow.batch_ended(10, 3); // a trickle: fewer than asked for
    }
    assert_eq!(flow.in_flight(), 0);
}

#[test]
fn concurrency_one_is_one_batch_after_the_other() {
    let mut flow = DrainFlow::new(u64::MAX, 10, 1);
    for _ in 0..3 {
        assert_eq!(start_all(&mut flow), vec![10]);
        flow.batch_ended(10, 10);
    }
    assert_eq!(start_all(&mut flow), vec![10]);
    flow.batch_ended(10, 0);
    assert!(flow.is_over());
    assert_eq!(flow.end(), Some(DrainEnd::QueueEmpty));
}

#[test]
fn never_asks_for_more_than_the_limit_and_asks_again_for_what_a_short_batch_left() {
    let mut flow = DrainFlow::new(25, 10, 8);
    assert_eq!(start_all(&mut flow), vec![10]);
    flow.batch_ended(10, 10);
    assert_eq!(
        start_all(&mut flow),
        vec![10, 5],
        "the last receive asks for the remainder"
    );
    // A receive may bring fewer than it asked for while the queue still holds more.
    flow.batch_ended(10, 4);
    assert_eq!(
        start_all(&mut flow),
        vec![6],
        "the 6 not received may be asked for again"
    );
    flow.batch_ended(5, 5);
    assert_eq!(flow.next_batch(), None);
    assert!(!flow.is_over(), "a batch is still in flight");
    flow.batch_ended(6, 6);
    assert!(flow.is_over());
    assert_eq!(flow.end(), Some(DrainEnd::LimitReached));
}

/// A flow with `n` batches in flight (grown by full batches first).
fn with_in_flight(concurrency: usize, n: usize) -> DrainFlow {
    let mut flow = DrainFlow::new(u64::MAX, 10, concurrency);
    while flow.in_flight() < n {
        let started = start_all(&mut flow);
        if flow.in_flight() >= n {
            break;
        }
        end_full(&mut flow, &started);
    }
    assert_eq!(flow.in_flight(), n);
    flow
}

#[test]
fn an_empty_receive_starts_no_more_batches_and_lets_those_in_flight_finish() {
    let mut flow = with_in_flight(3, 3);
    flow.batch_ended(10, 0);
    assert_eq!(flow.next_batch(), None, "the queue answered empty");
    assert!(!flow.is_over(), "two batches are still in flight");
    flow.batch_ended(10, 7);
    flow.batch_ended(10, 10);
    assert_eq!(flow.next_batch(), None);
    assert!(flow.is_over());
    assert_eq!(flow.end(), Some(DrainEnd::QueueEmpty));
}

#[test]
fn a_stop_starts_no_more_batches_and_waits_for_those_in_flight() {
    let mut flow = with_in_flight(2, 2);
    flow.stop();
    assert_eq!(flow.next_batch(), None, "no batch after a stop");
    assert!(
        !flow.is_over(),
        "the batches in hand are finished, not abandoned"
    );
    flow.batch_ended(10, 10);
    flow.batch_ended(10, 10);
    assert_eq!(flow.next_batch(), None);
    assert!(flow.is_over());
    assert_eq!(flow.end(), Some(DrainEnd::Stopped));
}

#[test]
fn a_stop_after_the_queue_emptied_keeps_the_first_reason() {
    let mut flow = with_in_flight(2, 2);
    flow.batch_ended(10, 0);
    flow.stop();
    flow.batch_ended(10, 3);
    assert!(flow.is_over());
    assert_eq!(flow.end(), Some(DrainEnd::QueueEmpty));
}

#[test]
fn a_limit_of_zero_starts_nothing_and_is_over_at_once() {
    let mut flow = DrainFlow::new(0, 10, 4);
    assert_eq!(flow.next_batch(), None);
    assert!(flow.is_over());
    assert_eq!(flow.end(), Some(DrainEnd::LimitReached));
}

#[test]
fn out_of_range_settings_are_clamped_to_what_sqs_and_a_drain_allow() {
    let mut flow = DrainFlow::new(u64::MAX, 50, 0);
    assert_eq!(
        start_all(&mut flow),
        vec![10],
        "SQS receives 10 at most; at least one batch runs"
    );
    let mut flow = DrainFlow::new(u64::MAX, 0, 1);
    assert_eq!(start_all(&mut flow), vec![1]);
}

/// Drains a queue of `queued` requests through `flow`, the batches ending in the order they
/// started, each receive taking what is visible when it starts (up to what it asks for), plus
/// `arriving` more requests that show up after the first receive. Returns the receives made, the
/// most batches in flight at once, and the requests received.
fn drain_queue(mut flow: DrainFlow, queued: u64, arriving: u64) -> (usize, usize, u64) {
    let mut visible = queued;
    let mut in_flight = std::collections::VecDeque::new();
    let (mut receives, mut most, mut received) = (0, 0, 0);
    loop {
        while let Some(asked) = flow.next_batch() {
            let got = visible.min(u64::from(asked));
            visible -= got;
            if receives == 0 {
                visible += arriving;
            }
            receives += 1;
            in_flight.push_back((asked, got));
            most = most.max(in_flight.len());
        }
        let Some((asked, got)) = in_flight.pop_front() else {
            break;
        };
        received += got;
        flow.batch_ended(asked, got as usize);
    }
    assert!(flow.is_over());
    (receives, most, received)
}

#[test]
fn a_counted_queue_gets_no_more_receives_than_its_requests_need() {
    for queued in [100, 1_000, 100_000] {
        let batches = (queued / 10) as usize;
        let (receives, most, received) = drain_queue(
            DrainFlow::new(u64::MAX, 10, 16).expecting(queued),
            queued,
            0,
        );
        assert_eq!(received, queued);
        assert_eq!(
            receives,
            batches + 1,
            "{queued} counted requests: one receive per batch and one that finds the queue empty"
        );
        if queued >= 1_000 {
            assert_eq!(
                most, 16,
                "the count does not hold a long drain below concurrency"
            );
        }
        let (uncounted, _, received) = drain_queue(DrainFlow::new(u64::MAX, 10, 16), queued, 0);
        assert_eq!(received, queued);
        assert_eq!(
            uncounted,
            batches + 16,
            "without a count, every receive in flight when the queue runs dry comes back empty"
        );
    }
}

#[test]
fn a_count_that_proved_too_low_is_dropped_and_the_drain_goes_on_at_full_concurrency() {
    // 20 counted, 500 more arriving once the drain has begun.
    let (receives, most, received) =
        drain_queue(DrainFlow::new(u64::MAX, 10, 8).expecting(20), 20, 500);
    assert_eq!(
        received, 520,
        "the requests that came in after the count are drained too"
    );
    assert_eq!(
        most, 8,
        "a full receive past the count lets the batches in flight grow again"
    );
    assert!(receives <= 52 + 8, "{receives} receives");
}

#[test]
fn a_count_that_is_too_high_still_ends_on_the_first_empty_receive() {
    let (receives, _, received) =
        drain_queue(DrainFlow::new(u64::MAX, 10, 16).expecting(1_000), 30, 0);
    assert_eq!(received, 30);
    assert!(receives <= 3 + 16, "{receives} receives");
}

#[test]
fn a_count_of_zero_makes_one_receive_and_an_empty_queue_ends_the_drain() {
    let mut flow = DrainFlow::new(u64::MAX, 10, 16).expecting(0);
    assert_eq!(start_all(&mut flow), vec![10], "one receive, alone");
    flow.batch_ended(10, 0);
    assert!(flow.is_over());
    assert_eq!(flow.end(), Some(DrainEnd::QueueEmpty));
}

#[test]
fn counted_requests_a_short_batch_did_not_get_are_asked_for_again() {
    let mut flow = DrainFlow::new(u64::MAX, 10, 16).expecting(20);
    let first = start_all(&mut flow);
    end_full(&mut flow, &first);
    let started = start_all(&mut flow);
    assert_eq!(
        started,
        vec![10],
        "10 counted requests left: one receive for them"
    );
    flow.batch_ended(10, 4);
    assert_eq!(
        start_all(&mut flow),
        vec![10],
        "the 6 counted requests the short batch did not get are asked for again"
    );
}

#[test]
fn one_empty_receive_while_counted_requests_wait_is_tried_again_alone() {
    let mut flow = DrainFlow::new(u64::MAX, 10, 16).expecting(1_000);
    let first = start_all(&mut flow);
    end_full(&mut flow, &first);
    let second = start_all(&mut flow);
    end_full(&mut flow, &second);
    let third = start_all(&mut flow);
    assert_eq!(third.len(), 8);
    // The server answers all 8 receives empty with 950 counted requests still waiting.
    for asked in third {
        flow.batch_ended(asked, 0);
    }
    assert!(
        !flow.is_over(),
        "an empty receive does not end a drain the count says is not done"
    );
    assert_eq!(
        start_all(&mut flow),
        vec![10],
        "the next receive goes alone"
    );
    flow.batch_ended(10, 10);
    assert_eq!(
        start_all(&mut flow).len(),
        2,
        "a receive that got requests lets the window grow again"
    );
}

#[test]
fn an_empty_receive_started_alone_after_an_empty_one_ends_the_drain_whatever_the_count_says() {
    // Another worker took the requests the count saw.
    let mut flow = DrainFlow::new(u64::MAX, 10, 16).expecting(1_000);
    let first = start_all(&mut flow);
    flow.batch_ended(first[0], 0);
    assert!(!flow.is_over());
    let second = start_all(&mut flow);
    assert_eq!(second, vec![10]);
    flow.batch_ended(10, 0);
    assert!(flow.is_over());
    assert_eq!(flow.end(), Some(DrainEnd::QueueEmpty));
}

#[test]
fn without_a_count_the_first_empty_receive_ends_the_drain() {
    let mut flow = DrainFlow::new(u64::MAX, 10, 16);
    let first = start_all(&mut flow);
    flow.batch_ended(first[0], 0);
    assert!(flow.is_over());
    assert_eq!(flow.end(), Some(DrainEnd::QueueEmpty));
}
