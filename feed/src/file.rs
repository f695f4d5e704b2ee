//! The `file:PATH` store: a JSON-lines event log, followed as it grows
//! into a [`MemoryStore`] (so `echo '{…}' >> PATH` is "the control plane
//! wrote an event").
//!
//! A line is a whole event (with `event_id` above the last one, and its
//! `aggregate_seq` as written) or `{"aggregate_type", "aggregate_id",
//! "event_type", "payload"}`, which takes the next ids when read. Blank
//! lines and `#` comments are skipped; a bad line is logged with its
//! number and skipped. A file that shrinks is not re-read (its lines would
//! be duplicates).
//!
//! `feed_id`: a random id kept in `PATH.feed_id`, created the first time
//! the log is opened. It travels with the log when both are backed up and
//! restored; another log (or a lost sidecar) gets another id, which makes
//! agents resynchronise rather than trust a foreign cursor.
//!
//! Appends through the store (`edge-feed append --store file:…`) hold an
//! exclusive `flock` on the log, catch up, and write whole events, so two
//! appending processes never give out the same ids.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use route_model::{Event, EventBatch};
use serde::Deserialize;
use tokio::sync::watch;

use crate::memory::{rfc3339, MemoryStore};
use crate::store::{AppendError, AppliedReport, Checkpoint, NewEvent, Store, StoreError};

/// How often the follower looks for new lines.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// The log file or its sidecar could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FileError {
    pub path: PathBuf,
    pub message: String,
}

impl From<FileError> for StoreError {
    fn from(e: FileError) -> StoreError {
        StoreError(e.to_string())
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Full(Event),
    Short {
        aggregate_type: String,
        aggregate_id: String,
        event_type: String,
        #[serde(default)]
        payload: serde_json::Value,
    },
}

/// A JSON-lines log served from memory.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    memory: MemoryStore,
    /// Bytes of the file already read into `memory`.
    read: Mutex<u64>,
}

fn err(path: &Path, e: impl std::fmt::Display) -> FileError {
    FileError {
        path: path.into(),
        message: e.to_string(),
    }
}

/// The log's feed_id, from `PATH.feed_id`, created if missing.
fn feed_id(path: &Path) -> Result<String, FileError> {
    let mut side = path.as_os_str().to_owned();
    side.push(".feed_id");
    let side = PathBuf::from(side);
    match std::fs::read_to_string(&side) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(&side, e)),
    }
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| err(Path::new("/dev/urandom"), e))?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let id = format!("file-{id}");
    std::fs::write(&side, format!("{id}\n")).map_err(|e| err(&side, e))?;
    Ok(id)
}

impl FileStore {
    /// Opens (creating if missing) the log and reads it whole.
    pub fn open(path: &Path) -> Result<Arc<FileStore>, FileError> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| err(path, e))?;
        let store = FileStore {
            path: path.into(),
            memory: MemoryStore::new(feed_id(path)?),
            read: Mutex::new(0),
        };
        store.follow()?;
        Ok(Arc::new(store))
    }

    /// Reads the complete lines appended since the last call; returns how
    /// many events they added.
    pub fn follow(&self) -> Result<usize, FileError> {
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let mut file = std::fs::File::open(&self.path).map_err(|e| err(&self.path, e))?;
        let len = file.metadata().map_err(|e| err(&self.path, e))?.len();
        if len < *read {
            tracing::warn!(path = %self.path.display(), "the log shrank; only lines added from now on count");
            *read = len;
            return Ok(0);
        }
        file.seek(SeekFrom::Start(*read))
            .map_err(|e| err(&self.path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| err(&self.path, e))?;
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            return Ok(0);
        };
        let mut added = 0;
        for line in String::from_utf8_lossy(&bytes[..end]).lines() {
            if self.absorb(line.trim()) {
                added += 1;
            }
        }
        *read += end as u64 + 1;
        Ok(added)
    }

    fn absorb(&self, line: &str) -> bool {
        if line.is_empty() || line.starts_with('#') {
            return false;
        }
        match serde_json::from_str::<Line>(line) {
            Ok(Line::Full(event)) => match self.memory.insert(event) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "line skipped");
                    false
                }
            },
            Ok(Line::Short {
                aggregate_type,
                aggregate_id,
                event_type,
                payload,
            }) => {
                let event = NewEvent {
                    event_type,
                    payload,
                };
                self.memory
                    .append_one(&aggregate_type, &aggregate_id, event);
                true
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, line, "line skipped");
                false
            }
        }
    }

    /// Follows the file every [`FOLLOW_EVERY`] until the task is aborted.
    pub fn spawn_follower(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FOLLOW_EVERY).await;
                let s = Arc::clone(&store);
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.follow()).await {
                    tracing::warn!(error = %e, "following the log");
                }
            }
        })
    }

    /// Appends under an exclusive lock on the file; returns the event_ids.
    fn append_locked(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: &[NewEvent],
    ) -> Result<Vec<u64>, FileError> {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| err(&self.path, e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| err(&self.path, e))?;
        self.follow()?;
        let first_id = self.memory.last_event_id() + 1;
        let first_seq = self.memory.next_seq(aggregate_type, aggregate_id);
        let full: Vec<Event> = events
            .iter()
            .enumerate()
            .map(|(i, e)| Event {
                event_id: first_id + i as u64,
                occurred_at: rfc3339(SystemTime::now()),
                aggregate_type: aggregate_type.into(),
                aggregate_id: aggregate_id.into(),
                aggregate_seq: first_seq + i as u64,
                event_type: e.event_type.clone(),
                payload: e.payload.clone(),
            })
            .collect();
        let mut text = String::new();
        for e in &full {
            text.push_str(&serde_json::to_string(e).expect("an event serialises"));
            text.push('\n');
        }
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|e| err(&self.path, e))?;
        self.follow()?; // reads our own lines back (and unlocks on drop)
        Ok(full.iter().map(|e| e.event_id).collect())
    }
}

#[tonic::async_trait]
impl Store for FileStore {
    fn feed_id(&self) -> &str {
        self.memory.feed_id()
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.memory.wakeups()
    }

    async fn page(&self, after: u64, limit: usize) -> Result<EventBatch, StoreError> {
        self.memory.page(after, limit).await
    }

    async fn append(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: &[NewEvent],
    ) -> Result<Vec<u64>, AppendError> {
        AppendError::require_events(aggregate_type, aggregate_id, events)?;
        Ok(self
            .append_locked(aggregate_type, aggregate_id, events)
            .map_err(StoreError::from)?)
    }

    async fn report_applied(&self, report: &AppliedReport) -> Result<(), StoreError> {
        self.memory.report_applied(report).await
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.memory.checkpoints().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn follows_short_and_full_lines_and_appends_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(
            &path,
            "# a comment\n\
             {\"aggregate_type\":\"env\",\"aggregate_id\":\"e\",\"event_type\":\"env.configured\",\"payload\":{}}\n\
             {\"event_id\":7,\"aggregate_type\":\"route\",\"aggregate_id\":\"r\",\"aggregate_seq\":1,\"event_type\":\"route.created\",\"payload\":{}}\n\
             not json\n",
        )
        .unwrap();
        let store = FileStore::open(&path).unwrap();
        let page = store.page(0, 10).await.unwrap();
        let ids: Vec<u64> = page.events.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, [1, 7]);
        let ev = NewEvent {
            event_type: "route.updated".into(),
            payload: json!({}),
        };
        assert_eq!(store.append("route", "r", &[ev]).await.unwrap(), [8]);
        // Another reader of the same file sees the appended, whole event.
        let again = FileStore::open(&path).unwrap();
        let last = again.page(7, 10).await.unwrap().events;
        assert_eq!((last[0].event_id, last[0].aggregate_seq), (8, 2));
        assert_eq!(again.feed_id(), store.feed_id(), "the sidecar keeps the id");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"aggregate_type\":\"instance\",\"aggregate_id\":\"i\",\"event_type\":\"instance.up\"}\n")
            .unwrap();
        assert_eq!(again.follow().unwrap(), 1);
        assert_eq!(again.page(0, 10).await.unwrap().head, 9);
    }

    #[test]
    fn another_log_has_another_feed_id() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileStore::open(&dir.path().join("a.jsonl")).unwrap();
        let b = FileStore::open(&dir.path().join("b.jsonl")).unwrap();
        assert_ne!(a.feed_id(), b.feed_id());
    }
}
