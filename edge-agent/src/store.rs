//! The agent's durable state: the materialised [`State`] (which includes
//! the cursor) in `state_dir/state.json`, replaced atomically, and only
//! after the edge has applied the table built from it.

use std::path::{Path, PathBuf};

use route_model::State;

const STATE_FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct Store {
    path: PathBuf,
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

    /// The saved state; a missing file is a fresh start. A file that does
    /// not parse is moved aside (`state.json.corrupt`) and the agent
    /// resynchronises from `after=0`: the feed is the source of truth.
    pub fn load(&self) -> Result<State, StoreError> {
        let io = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        let Some(bytes) = durable::read_optional(&self.path).map_err(io)? else {
            return Ok(State::default());
        };
        match serde_json::from_slice(&bytes) {
            Ok(state) => Ok(state),
            Err(e) => {
                let aside = self.path.with_extension("json.corrupt");
                tracing::error!(path = %self.path.display(), error = %e, moved_to = %aside.display(),
                    "saved state unreadable; resynchronising from the start of the feed");
                std::fs::rename(&self.path, &aside).map_err(io)?;
                Ok(State::default())
            }
        }
    }

    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(state).expect("State always serialises");
        durable::write_atomic(&self.path, &bytes).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })
    }
}
