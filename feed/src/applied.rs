//! Read-your-writes: which nodes have not yet applied an event. A node
//! counts when it reported within the window (a node that stopped
//! reporting is gone, not lagging). No I/O; the wait lives in
//! [`crate::feed::Feed::wait_applied`].

use std::time::Duration;

use serde::Serialize;

use crate::store::Checkpoint;

/// The answer to "has every live edge applied `event_id`?".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub event_id: u64,
    /// Nodes that reported within the window.
    pub nodes: Vec<String>,
    /// Those of them still below `event_id`: `(node_id, applied event_id)`.
    pub laggards: Vec<Laggard>,
}

/// A live node below the awaited event_id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Laggard {
    pub node_id: String,
    pub event_id: u64,
}

impl Verdict {
    pub fn reached(&self) -> bool {
        self.laggards.is_empty()
    }
}

/// Judges `checkpoints` against `event_id`, counting nodes seen within
/// `window`.
pub fn verdict(checkpoints: &[Checkpoint], event_id: u64, window: Duration) -> Verdict {
    let live: Vec<&Checkpoint> = checkpoints.iter().filter(|c| c.age <= window).collect();
    Verdict {
        event_id,
        nodes: live.iter().map(|c| c.node_id.clone()).collect(),
        laggards: live
            .iter()
            .filter(|c| c.event_id < event_id)
            .map(|c| Laggard {
                node_id: c.node_id.clone(),
                event_id: c.event_id,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(node: &str, event_id: u64, age_s: u64) -> Checkpoint {
        Checkpoint {
            node_id: node.into(),
            event_id,
            age: Duration::from_secs(age_s),
        }
    }

    #[test]
    fn live_nodes_below_the_event_are_laggards() {
        let cps = [cp("a", 10, 1), cp("b", 7, 2), cp("gone", 1, 600)];
        let v = verdict(&cps, 8, Duration::from_secs(60));
        assert_eq!(v.nodes, ["a", "b"]);
        assert_eq!(
            v.laggards,
            [Laggard {
                node_id: "b".into(),
                event_id: 7
            }]
        );
        assert!(!v.reached());
        assert!(verdict(&cps, 7, Duration::from_secs(60)).reached());
    }

    #[test]
    fn no_live_node_means_nothing_to_wait_for() {
        let v = verdict(&[cp("gone", 1, 600)], 5, Duration::from_secs(60));
        assert!(v.reached());
        assert!(v.nodes.is_empty());
    }
}
