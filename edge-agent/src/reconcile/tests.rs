use route_model::Event;
use serde_json::json;

use super::*;

const T0: u64 = 1_800_000_000_000;

/// `route.created` for route `r-<n>` as event `id`.
fn created(id: u64, n: u64) -> Event {
    let rid = format!("r-{n}");
    Event {
        event_id: id,
        occurred_at: String::new(),
        aggregate_type: "route".into(),
        aggregate_id: rid.clone(),
        aggregate_seq: 1,
        event_type: "route.created".into(),
        payload: json!({"id": rid, "env": "acme/shop/prod", "hostname": format!("h{n}.example.com"),
                        "listen_port": 443, "protocol": "tls_passthrough", "backend_port": 8443}),
    }
}

fn batch(head: u64, feed: Option<&str>, ids: &[u64]) -> EventBatch {
    EventBatch {
        head,
        events: ids.iter().map(|&id| created(id, id)).collect(),
        feed_id: feed.map(str::to_owned),
    }
}

/// A machine following feed "A" with a saved cursor of 10 (generation 7).
fn following() -> Reconcile {
    let mut state = State::default();
    state
        .apply_all(&(1..=10).map(|i| created(i, i)).collect::<Vec<_>>())
        .unwrap();
    Reconcile::new(
        Start::Saved(Box::new(Saved {
            state,
            feed_id: Some("A".into()),
            generation: 7,
            head: 10,
        })),
        T0,
    )
}

fn applied() -> Answer {
    Answer::Applied {
        rejected: Vec::new(),
    }
}

/// Feeds `b` and returns what `ready` decides.
fn feed(m: &mut Reconcile, b: &EventBatch, now: u64) -> Step {
    let absorbed = m.on_batch(b, now);
    assert_eq!(
        absorbed.step,
        Step::Wait,
        "batch refused: {:?}",
        absorbed.step
    );
    m.ready()
}

fn plan_of(step: &Step) -> &PushPlan {
    match step {
        Step::Push { plan, .. } => plan,
        other => panic!("expected a push, got {other:?}"),
    }
}

#[test]
fn a_new_node_pushes_nothing_before_the_head_seen_first() {
    let mut m = Reconcile::new(Start::Fresh, T0);
    assert_eq!(m.catching_up(), Some(ResyncReason::NoState));
    assert_eq!(m.after(), 0);
    assert_eq!(m.generation(), T0);
    assert_eq!(feed(&mut m, &batch(5, Some("A"), &[1, 2]), T0), Step::Wait);
    assert_eq!(m.events_left(), 3);
    // The head moved on meanwhile: the target stays the first head seen.
    assert_eq!(feed(&mut m, &batch(9, Some("A"), &[3, 4]), T0), Step::Wait);
    assert_eq!(m.events_left(), 1);
    let step = feed(&mut m, &batch(9, Some("A"), &[5, 6]), T0);
    let plan = plan_of(&step).clone();
    assert_eq!(
        plan,
        PushPlan {
            format: PUSH_FORMAT,
            source_version: 6,
            generation: T0,
            feed_id: Some("A".into()),
        }
    );
    assert_eq!(m.working().spec().routes.len(), 6);
    assert_eq!(
        m.on_answer(applied(), T0 + 1),
        Step::Committed {
            cursor: 6,
            rejected: Vec::new()
        }
    );
    assert_eq!(m.catching_up(), None);
    assert_eq!(m.saved().state.cursor(), 6);
    assert_eq!(m.saved().generation, T0);
    assert_eq!(m.saved().feed_id.as_deref(), Some("A"));
    // Following now: each new batch is pushed in the same generation.
    let step = feed(&mut m, &batch(9, Some("A"), &[7]), T0 + 2);
    assert_eq!(plan_of(&step).generation, T0);
    assert_eq!(plan_of(&step).source_version, 7);
}

#[test]
fn an_unreadable_state_catches_up_like_a_new_node() {
    let mut m = Reconcile::new(Start::Unreadable, T0);
    assert_eq!(m.catching_up(), Some(ResyncReason::StateUnreadable));
    assert!(!m.foreign());
    assert_eq!(feed(&mut m, &batch(3, None, &[1, 2]), T0), Step::Wait);
    let step = feed(&mut m, &batch(3, None, &[3]), T0);
    assert_eq!(plan_of(&step).feed_id, None);
}

#[test]
fn an_empty_log_is_caught_up_at_once() {
    let mut m = Reconcile::new(Start::Fresh, T0);
    let step = feed(&mut m, &batch(0, Some("A"), &[]), T0);
    assert_eq!(plan_of(&step).source_version, 0);
}

#[test]
fn a_drained_feed_ends_the_catch_up_even_if_the_head_event_is_not_served() {
    // The head is an event of a type the feed filters out: an empty page
    // after the last event says nothing is left.
    let mut m = Reconcile::new(Start::Fresh, T0);
    assert_eq!(feed(&mut m, &batch(4, Some("A"), &[1, 2]), T0), Step::Wait);
    let step = feed(&mut m, &batch(4, Some("A"), &[]), T0);
    assert_eq!(plan_of(&step).source_version, 2);
}

#[test]
fn a_saved_state_follows_on_in_its_generation() {
    let mut m = following();
    assert_eq!(m.catching_up(), None);
    assert_eq!(m.after(), 10);
    assert_eq!(m.lag(), Some(0));
    // Nothing new: nothing to push.
    assert_eq!(feed(&mut m, &batch(10, Some("A"), &[]), T0), Step::Wait);
    let step = feed(&mut m, &batch(12, Some("A"), &[11, 12]), T0);
    assert_eq!(plan_of(&step).generation, 7);
    assert_eq!(plan_of(&step).source_version, 12);
}

#[test]
fn another_feed_id_is_a_foreign_cursor_and_resyncs_in_a_new_generation() {
    let mut m = following();
    let absorbed = m.on_batch(&batch(50, Some("B"), &[11]), T0);
    assert_eq!(
        absorbed.step,
        Step::Resync {
            reason: ResyncReason::FeedChanged,
            delay_ms: 0
        }
    );
    assert!(absorbed.applied.is_empty());
    assert!(m.foreign());
    assert_eq!(m.after(), 0);
    assert_eq!(m.generation(), T0);
    // The rebuild reads log B from 0 to its head, then swaps it in.
    assert_eq!(feed(&mut m, &batch(3, Some("B"), &[1, 2]), T0), Step::Wait);
    assert!(m.foreign());
    let step = feed(&mut m, &batch(3, Some("B"), &[3]), T0);
    assert_eq!(plan_of(&step).feed_id.as_deref(), Some("B"));
    assert_eq!(plan_of(&step).generation, T0);
    assert!(matches!(
        m.on_answer(applied(), T0),
        Step::Committed { cursor: 3, .. }
    ));
    assert!(!m.foreign());
    assert_eq!(m.saved().feed_id.as_deref(), Some("B"));
}

#[test]
fn a_head_below_the_cursor_is_a_restored_log_and_resyncs() {
    let mut m = following();
    let absorbed = m.on_batch(&batch(6, Some("A"), &[]), T0);
    assert_eq!(
        absorbed.step,
        Step::Resync {
            reason: ResyncReason::HeadBelowCursor,
            delay_ms: 0
        }
    );
    assert!(m.foreign());
    // The lag is not clamped: the log is behind what the edge serves.
    assert_eq!(m.lag(), Some(-4));
    assert_eq!(m.after(), 0);
    let step = feed(&mut m, &batch(6, Some("A"), &[1, 2, 3, 4, 5, 6]), T0);
    // A lower cursor in a newer generation: the edge takes it.
    assert_eq!(plan_of(&step).source_version, 6);
    assert!(plan_of(&step).generation > 7);
}

#[test]
fn a_feed_that_changes_during_the_catch_up_starts_it_again() {
    let mut m = Reconcile::new(Start::Fresh, T0);
    assert_eq!(feed(&mut m, &batch(5, Some("A"), &[1, 2]), T0), Step::Wait);
    let absorbed = m.on_batch(&batch(5, Some("B"), &[3]), T0 + 5);
    assert!(matches!(
        absorbed.step,
        Step::Resync {
            reason: ResyncReason::FeedChanged,
            ..
        }
    ));
    assert_eq!(m.after(), 0);
    assert_eq!(m.generation(), T0 + 5);
}

#[test]
fn out_of_order_and_repeated_ids_are_errors_not_duplicates() {
    let mut m = following();
    let absorbed = m.on_batch(&batch(20, Some("A"), &[12, 11]), T0);
    assert_eq!(
        absorbed.step,
        Step::Reconnect(Anomaly::OutOfOrder {
            event_id: 11,
            after: 12
        })
    );
    assert_eq!(m.after(), 10, "nothing of a refused batch is applied");
    // An id at or below the cursor is the same error.
    let absorbed = m.on_batch(&batch(20, Some("A"), &[10]), T0);
    assert_eq!(
        absorbed.step.clone(),
        Step::Reconnect(Anomaly::OutOfOrder {
            event_id: 10,
            after: 10
        })
    );
    assert_eq!(
        Anomaly::OutOfOrder {
            event_id: 1,
            after: 1
        }
        .kind(),
        "out_of_order"
    );
    assert_eq!(m.ready(), Step::Wait);
}

#[test]
fn an_event_beyond_the_head_never_moves_the_cursor() {
    let mut m = following();
    let absorbed = m.on_batch(&batch(11, Some("A"), &[11, 1_000_000]), T0);
    assert_eq!(
        absorbed.step,
        Step::Reconnect(Anomaly::BeyondHead {
            event_id: 1_000_000,
            head: 11
        })
    );
    assert_eq!(m.after(), 10);
    assert_eq!(m.ready(), Step::Wait);
    // The same feed, sane again, is followed on.
    let step = feed(&mut m, &batch(11, Some("A"), &[11]), T0);
    assert_eq!(plan_of(&step).source_version, 11);
}

#[test]
fn a_gap_resyncs_with_a_growing_delay() {
    let mut m = following();
    let mut gapped = batch(12, Some("A"), &[11]);
    gapped.events[0].aggregate_seq = 3;
    let absorbed = m.on_batch(&gapped, T0);
    assert_eq!(
        absorbed.step,
        Step::Resync {
            reason: ResyncReason::Gap,
            delay_ms: GAP_BACKOFF_MS
        }
    );
    assert_eq!(absorbed.gap.unwrap().expected, 1);
    assert!(!m.foreign());
    let mut gapped = batch(12, Some("A"), &[1]);
    gapped.events[0].aggregate_seq = 2;
    let again = m.on_batch(&gapped, T0);
    assert!(matches!(again.step, Step::Resync { delay_ms, .. } if delay_ms == 2 * GAP_BACKOFF_MS));
}

#[test]
fn a_refused_push_resyncs_in_a_new_generation_with_backoff() {
    let mut m = following();
    let step = feed(&mut m, &batch(11, Some("A"), &[11]), T0);
    assert_eq!(plan_of(&step).generation, 7);
    assert_eq!(
        m.on_answer(Answer::Refused, T0 + 100),
        Step::Resync {
            reason: ResyncReason::Refused,
            delay_ms: REFUSED_BACKOFF_MS
        }
    );
    assert_eq!(m.generation(), T0 + 100);
    assert_eq!(m.after(), 0);
    assert_eq!(m.saved().state.cursor(), 10, "nothing is saved");
    let step = feed(
        &mut m,
        &batch(11, Some("A"), &(1..=11).collect::<Vec<_>>()),
        T0,
    );
    assert_eq!(plan_of(&step).generation, T0 + 100);
    // Refused again (within the same millisecond): a newer generation
    // still, and a longer wait.
    assert_eq!(
        m.on_answer(Answer::Refused, T0 + 100),
        Step::Resync {
            reason: ResyncReason::Refused,
            delay_ms: 2 * REFUSED_BACKOFF_MS
        }
    );
    assert_eq!(m.generation(), T0 + 101);
    let step = feed(
        &mut m,
        &batch(11, Some("A"), &(1..=11).collect::<Vec<_>>()),
        T0,
    );
    assert!(matches!(m.on_answer(applied(), T0), Step::Committed { .. }));
    assert_eq!(m.saved().generation, plan_of(&step).generation);
}

#[test]
fn a_failed_push_is_retried_with_the_same_fence() {
    let mut m = following();
    let first = plan_of(&feed(&mut m, &batch(11, Some("A"), &[11]), T0)).clone();
    assert_eq!(
        m.on_answer(Answer::Failed, T0),
        Step::Push {
            plan: first,
            delay_ms: PUSH_RETRY_MS
        }
    );
    assert_eq!(m.saved().state.cursor(), 10);
}

#[test]
fn rejected_objects_are_reported_as_rejected() {
    let mut m = following();
    feed(&mut m, &batch(11, Some("A"), &[11]), T0);
    let rejected = vec![Rejected {
        aggregate_type: "route".into(),
        aggregate_id: "r-11".into(),
        reason: "hostname_in_two_envs".into(),
    }];
    assert_eq!(
        m.on_answer(
            Answer::Applied {
                rejected: rejected.clone()
            },
            T0
        ),
        Step::Committed {
            cursor: 11,
            rejected
        }
    );
}

#[test]
fn the_edge_is_repushed_when_it_serves_another_table_but_not_while_rebuilding() {
    let mut m = following();
    assert_eq!(m.on_status(10, 7), Step::Wait);
    // An edge that reports no fence is judged by its cursor alone.
    assert_eq!(m.on_status(10, 0), Step::Wait);
    assert_eq!(plan_of(&m.on_status(0, 0)).source_version, 10);
    assert!(matches!(
        m.on_answer(applied(), T0),
        Step::Committed { cursor: 10, .. }
    ));
    // Another generation at the same cursor is another table too.
    assert!(matches!(m.on_status(10, 99), Step::Push { .. }));
    let mut fresh = Reconcile::new(Start::Fresh, T0);
    assert_eq!(fresh.on_status(0, 0), Step::Wait);
}

#[test]
fn an_answer_without_a_push_in_flight_is_ignored() {
    let mut m = following();
    assert_eq!(m.on_answer(applied(), T0), Step::Wait);
    assert_eq!(m.saved().state.cursor(), 10);
}
