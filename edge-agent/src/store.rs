//! The agent's durable state in `state_dir/state.json`: the materialised
//! [`State`] (cursor included), the `feed_id` it was built from, the push
//! generation and the last head seen, under a `format` version. Replaced
//! atomically, and only after the edge has applied the table built from it.
//!
//! A file that does not parse, or has another `format` (an older build's,
//! or a newer one's), is never overwritten: it is moved aside to
//! `state.json.unreadable-<unix-seconds>` and the agent catches up from the
//! feed, which is the source of truth.

use std::path::{Path, PathBuf};

use route_model::State;
use serde::{Deserialize, Serialize};

use crate::reconcile::{Saved, Start};

const STATE_FILE: &str = "state.json";
/// The `format` this build reads and writes.
pub const STATE_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A saved state that could not be used, and where it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub why: String,
    pub moved_to: PathBuf,
}

#[derive(Debug)]
pub struct Store {
    path: PathBuf,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: u32,
    feed_id: Option<String>,
    generation: u64,
    head: u64,
    state: State,
}

impl Store {
    /// Creates `state_dir` if needed.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Io {
            path: state_dir.to_owned(),
            source,
        })?;
        Ok(Store {
            path: state_dir.join(STATE_FILE),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, or why there is none. `now_secs` names the file an
    /// unreadable state is moved to.
    pub fn load(&self, now_secs: u64) -> Result<(Start, Option<SetAside>), StoreError> {
        let io = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        let Some(bytes) = durable::read_optional(&self.path).map_err(io)? else {
            return Ok((Start::Fresh, None));
        };
        match decode(&bytes) {
            Ok(saved) => Ok((Start::Saved(Box::new(saved)), None)),
            Err(why) => {
                let moved_to = self.aside(now_secs);
                std::fs::rename(&self.path, &moved_to).map_err(io)?;
                Ok((Start::Unreadable, Some(SetAside { why, moved_to })))
            }
        }
    }

    pub fn save(&self, saved: &Saved) -> Result<(), StoreError> {
        let file = File {
            format: STATE_FORMAT,
            feed_id: saved.feed_id.clone(),
            generation: saved.generation,
            head: saved.head,
            state: saved.state.clone(),
        };
        let bytes = serde_json::to_vec(&file).expect("the state always serialises");
        durable::write_atomic(&self.path, &bytes).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// `state.json.unreadable-<secs>`, with `-<n>` added if that is taken:
    /// an earlier file set aside is never overwritten.
    fn aside(&self, now_secs: u64) -> PathBuf {
        let base = format!("{}.unreadable-{now_secs}", self.path.display());
        let mut candidate = PathBuf::from(&base);
        let mut n = 1;
        while candidate.exists() {
            candidate = PathBuf::from(format!("{base}-{n}"));
            n += 1;
        }
        candidate
    }
}

/// The saved state, or why it cannot be used.
fn decode(bytes: &[u8]) -> Result<Saved, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    match value.get("format").and_then(serde_json::Value::as_u64) {
        Some(f) if f == u64::from(STATE_FORMAT) => {}
        Some(f) => return Err(format!("format {f}; this build reads {STATE_FORMAT}")),
        None => return Err("no format field (an older build's file)".into()),
    }
    let file: File = serde_json::from_value(value).map_err(|e| e.to_string())?;
    Ok(Saved {
        state: file.state,
        feed_id: file.feed_id,
        generation: file.generation,
        head: file.head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved() -> Saved {
        Saved {
            state: State::default(),
            feed_id: Some("log-1".into()),
            generation: 42,
            head: 7,
        }
    }

    #[test]
    fn a_saved_state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load(1).unwrap(), (Start::Fresh, None));
        store.save(&saved()).unwrap();
        assert_eq!(
            store.load(1).unwrap(),
            (Start::Saved(Box::new(saved())), None)
        );
    }

    #[test]
    fn unreadable_and_other_formats_are_set_aside_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let newer = br#"{"format": 2, "whatever": true}"#;
        for (bytes, why) in [
            (&b"{not json"[..], "not JSON"),
            (&newer[..], "format 2"),
            (&br#"{"cursor": 3}"#[..], "no format"),
        ] {
            std::fs::write(store.path(), bytes).unwrap();
            let (start, aside) = store.load(1_800_000_000).unwrap();
            assert_eq!(start, Start::Unreadable);
            let aside = aside.unwrap();
            assert!(aside.why.contains(why), "{}", aside.why);
            assert_eq!(std::fs::read(&aside.moved_to).unwrap(), bytes);
            assert!(!store.path().exists());
        }
        // Three files set aside in the same second: three names.
        let kept = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(kept, 3);
    }
}
