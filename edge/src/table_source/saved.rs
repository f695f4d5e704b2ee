//! The saved table (`control.state_dir/routing.json`) and the push fence,
//! as plain values: the file's format version, decoding it into "usable",
//! "unreadable" or "newer format", and the rule that decides whether a
//! push may replace the live table. No I/O.
//!
//! routing.json is one JSON object:
//! `{"format": 1, "feed_id": "...", "generation": G, "source_version": S,
//!   "table_version": V, "routing": {"envs": [...], "instances": [...], "routes": [...]}}`.
//! A file without `format` was written before formats existed; it has the
//! same shape as format 1 (without the fence fields) and is read as such.

use std::sync::Arc;

use route_model::RoutingSpec;
use serde::{Deserialize, Serialize};

/// The format of routing.json and of `PushRequest.routing_json` that this
/// edge writes and reads. 0 (a field left unset by an older agent, or a
/// file written before formats existed) is read as 1.
pub(crate) const FORMAT: u32 = 1;

/// True when this edge can read data of `format`.
pub(crate) fn format_known(format: u32) -> bool {
    format <= FORMAT
}

/// Who pushed a table, and how far it reaches: the identity of the event
/// log, the agent's push generation (a new one at every resynchronisation)
/// and its cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Fence {
    #[serde(default)]
    pub feed_id: String,
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub source_version: u64,
}

/// A push refused by the fence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "stale push: generation {} source_version {} (feed_id {:?}) is older than the live table's generation {} source_version {} (feed_id {:?})",
    pushed.generation, pushed.source_version, pushed.feed_id,
    live.generation, live.source_version, live.feed_id
)]
pub(crate) struct Stale {
    pub pushed: Fence,
    pub live: Fence,
}

impl Fence {
    /// Whether a push fenced by `pushed` may replace the table fenced by
    /// `self`: a newer generation always may (even with a lower cursor: a
    /// log restored from a backup is the truth); an older one never; within
    /// one generation the cursor must not go back (equal is an idempotent
    /// re-push).
    pub(crate) fn admit(&self, pushed: &Fence) -> Result<(), Stale> {
        let stale = pushed.generation < self.generation
            || (pushed.generation == self.generation
                && pushed.source_version < self.source_version);
        if stale {
            Err(Stale {
                pushed: pushed.clone(),
                live: self.clone(),
            })
        } else {
            Ok(())
        }
    }
}

/// A table pushed by edge-agent, as kept in memory and on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Saved {
    #[serde(default)]
    pub format: u32,
    #[serde(flatten)]
    pub fence: Fence,
    /// The edge's table version that served this table when it was saved
    /// (0 in files written before it was kept): versions continue from it.
    #[serde(default)]
    pub table_version: u64,
    #[serde(with = "shared_spec")]
    pub routing: Arc<RoutingSpec>,
}

/// Serde for the shared spec (serde's `rc` feature is not enabled).
mod shared_spec {
    use std::sync::Arc;

    use route_model::RoutingSpec;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(
        spec: &Arc<RoutingSpec>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        spec.as_ref().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Arc<RoutingSpec>, D::Error> {
        RoutingSpec::deserialize(d).map(Arc::new)
    }
}

/// What was found in routing.json.
#[derive(Debug)]
pub(crate) enum Decoded {
    Usable(Saved),
    /// The bytes are not a saved table this edge can read.
    Unreadable(String),
    /// Written by a newer edge: not read, so not misread.
    NewerFormat(u32),
}

/// Only the format, read first so that a newer file is never half-parsed.
#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    format: u32,
}

/// Decodes routing.json.
pub(crate) fn decode(bytes: &[u8]) -> Decoded {
    match serde_json::from_slice::<Header>(bytes) {
        Ok(h) if !format_known(h.format) => return Decoded::NewerFormat(h.format),
        Ok(_) => {}
        Err(e) => return Decoded::Unreadable(e.to_string()),
    }
    match serde_json::from_slice::<Saved>(bytes) {
        Ok(saved) => Decoded::Usable(saved),
        Err(e) => Decoded::Unreadable(e.to_string()),
    }
}

/// Encodes a saved table as format [`FORMAT`].
/// The parts around a pushed table's routing JSON (written between them
/// exactly as pushed) that make its file, so a table of hundreds of MB is saved
/// without being serialised again or copied: the same document
/// [`encode`] writes, read back by [`decode`].
pub(crate) fn encode_raw(fence: &Fence, table_version: u64) -> (Vec<u8>, Vec<u8>) {
    #[derive(Serialize)]
    struct Header<'a> {
        format: u32,
        #[serde(flatten)]
        fence: &'a Fence,
        table_version: u64,
    }
    let header = Header {
        format: FORMAT,
        fence,
        table_version,
    };
    let mut head = serde_json::to_vec(&header).expect("a header always serialises");
    // `{...}` -> `{..., "routing": ` + routing + `}`
    head.pop();
    head.extend_from_slice(br#","routing":"#);
    (head, b"}".to_vec())
}

pub(crate) fn encode(saved: &Saved) -> Vec<u8> {
    let mut saved = saved.clone();
    saved.format = FORMAT;
    serde_json::to_vec(&saved).expect("a saved table always serialises")
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_table_saved_from_its_pushed_json_reads_back_as_encoded() {
        let json = r#"{"envs":[{"id":"acme/shop/prod","ipv6":["::1"],"ports":[]}],"instances":[],"routes":[]}"#;
        let fence = Fence {
            feed_id: "feed-1".into(),
            generation: 7,
            source_version: 42,
        };
        let (head, tail) = encode_raw(&fence, 9);
        let bytes = [head, json.as_bytes().to_vec(), tail].concat();
        let Decoded::Usable(saved) = decode(&bytes) else {
            panic!("{}", String::from_utf8_lossy(&bytes))
        };
        assert_eq!(saved.fence, fence);
        assert_eq!(saved.table_version, 9);
        assert_eq!(
            *saved.routing,
            serde_json::from_str::<RoutingSpec>(json).unwrap()
        );
        let again = encode(&saved);
        let Decoded::Usable(from_encode) = decode(&again) else {
            panic!()
        };
        assert_eq!(from_encode.routing, saved.routing);
    }
    use super::*;

    fn fence(generation: u64, source_version: u64) -> Fence {
        Fence {
            feed_id: "f".into(),
            generation,
            source_version,
        }
    }

    #[test]
    fn the_fence_orders_by_generation_then_cursor() {
        let live = fence(5, 10);
        assert!(live.admit(&fence(5, 10)).is_ok(), "idempotent re-push");
        assert!(live.admit(&fence(5, 11)).is_ok());
        assert!(
            live.admit(&fence(6, 1)).is_ok(),
            "newer generation, lower cursor"
        );
        let e = live.admit(&fence(5, 9)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("stale push: generation 5 source_version 9"),
            "{e}"
        );
        assert!(
            e.to_string().contains("generation 5 source_version 10"),
            "{e}"
        );
        assert!(live.admit(&fence(4, 100)).is_err());
    }

    #[test]
    fn a_saved_table_round_trips_with_its_format_and_fence() {
        let saved = Saved {
            format: 0,
            fence: fence(7, 42),
            table_version: 9,
            routing: Arc::new(RoutingSpec::default()),
        };
        let bytes = encode(&saved);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"format\":1"), "{text}");
        let Decoded::Usable(back) = decode(&bytes) else {
            panic!("{text}")
        };
        assert_eq!(back.fence, fence(7, 42));
        assert_eq!(back.table_version, 9);
    }

    #[test]
    fn a_file_from_before_formats_is_read_as_format_1() {
        let old =
            br#"{"source_version": 3, "routing": {"envs": [], "instances": [], "routes": []}}"#;
        let Decoded::Usable(saved) = decode(old) else {
            panic!("old file not usable")
        };
        assert_eq!(saved.fence.source_version, 3);
        assert_eq!(saved.fence.generation, 0);
        assert_eq!(saved.table_version, 0);
    }

    #[test]
    fn newer_formats_and_garbage_are_not_read() {
        assert!(matches!(
            decode(br#"{"format": 2, "tables": []}"#),
            Decoded::NewerFormat(2)
        ));
        assert!(matches!(decode(b"{not json"), Decoded::Unreadable(_)));
        assert!(matches!(
            decode(br#"{"format": 1, "routing": 5}"#),
            Decoded::Unreadable(_)
        ));
    }
}
