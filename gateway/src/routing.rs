//! Which loaded model takes a request: the active one, or the fallback when the active one's queue is too
//! slow; and switching the active model while requests stream.
//!
//! **Invariant: a switch loses no request.** Every request holds an `Arc<Loaded>` of the model it was routed
//! to from routing until its last byte is sent. A switch loads the new engine first, then swaps it in
//! (new requests go there at once), and only shuts the old engine down once no request holds it any more.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use engine::{Engine, EngineConfig, EngineError, EngineHandle};

/// One loaded model and the name clients know it by.
#[derive(Debug)]
pub struct Loaded {
    pub name: Arc<str>,
    pub engine: EngineHandle,
}

/// A model the admin API may switch to.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogEntry {
    pub name: String,
    pub path: PathBuf,
}

/// The fallback model and when it takes over.
#[derive(Debug)]
pub struct Fallback {
    pub model: Arc<Loaded>,
    /// Requests go to the fallback while the active model's oldest queued request has waited this long.
    pub after: Duration,
}

/// Why a switch did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("no model named {name:?} is configured (known: {known})")]
    Unknown { name: String, known: String },
    #[error("cannot load {name:?}: {source}")]
    Load { name: String, source: EngineError },
}

/// The models of one server.
#[derive(Debug)]
pub struct ModelRouter {
    active: RwLock<Arc<Loaded>>,
    fallback: Option<Fallback>,
    catalog: Vec<CatalogEntry>,
    /// Limits for engines loaded by a switch (the model path is replaced).
    template: Option<EngineConfig>,
    /// One switch at a time.
    switching: tokio::sync::Mutex<()>,
}

impl ModelRouter {
    /// A router with one model and no catalog: nothing to switch to.
    pub fn single(name: impl Into<Arc<str>>, engine: EngineHandle) -> Self {
        Self::new(
            Arc::new(Loaded {
                name: name.into(),
                engine,
            }),
            None,
            Vec::new(),
            None,
        )
    }

    /// `active` serves at start; `catalog` names what the admin API may load, with `template`'s limits.
    pub fn new(
        active: Arc<Loaded>,
        fallback: Option<Fallback>,
        catalog: Vec<CatalogEntry>,
        template: Option<EngineConfig>,
    ) -> Self {
        Self {
            active: RwLock::new(active),
            fallback,
            catalog,
            template,
            switching: tokio::sync::Mutex::new(()),
        }
    }

    /// The active model.
    pub fn active(&self) -> Arc<Loaded> {
        self.active
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The model a new request goes to: the fallback while the active model's queue wait is over the
    /// fallback's threshold, else the active model. Hold the result until the response is complete.
    pub fn route(&self) -> Arc<Loaded> {
        let active = self.active();
        match &self.fallback {
            Some(fallback) if active.engine.stats().queue_wait() >= fallback.after => {
                tracing::debug!(from = %active.name, to = %fallback.model.name, "active model's queue is slow; using the fallback");
                fallback.model.clone()
            }
            _ => active,
        }
    }

    /// The fallback model, if one is configured.
    pub fn fallback(&self) -> Option<&Fallback> {
        self.fallback.as_ref()
    }

    /// The models the admin API may switch to.
    pub fn catalog(&self) -> &[CatalogEntry] {
        &self.catalog
    }

    /// Load `name` and make it the active model; the previous one finishes its requests, then stops.
    /// Returns the previous model's name. Loading takes seconds; requests keep flowing meanwhile.
    pub async fn switch(&self, name: &str) -> Result<Arc<str>, SwitchError> {
        let _one_at_a_time = self.switching.lock().await;
        let entry = self
            .catalog
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| SwitchError::Unknown {
                name: name.to_owned(),
                known: self
                    .catalog
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let current = self.active();
        if *current.name == *name {
            return Ok(current.name.clone());
        }
        let mut config = self.template.clone().unwrap_or_else(|| EngineConfig::new(&entry.path));
        config.model_path = entry.path.clone();
        let load_name = name.to_owned();
        let engine = tokio::task::spawn_blocking(move || Engine::load(config))
            .await
            .map_err(|join| SwitchError::Load {
                name: load_name.clone(),
                source: EngineError::Load {
                    path: join.to_string(),
                    reason: "the loader panicked".into(),
                },
            })?
            .map_err(|source| SwitchError::Load {
                name: load_name,
                source,
            })?;
        let loaded = Arc::new(Loaded {
            name: name.into(),
            engine,
        });
        let previous = std::mem::replace(&mut *self.active.write().unwrap_or_else(|p| p.into_inner()), loaded);
        tracing::info!(from = %previous.name, to = %name, "switched the active model");
        let previous_name = previous.name.clone();
        tokio::spawn(retire(previous));
        Ok(previous_name)
    }

    /// Every engine this router holds, for shutdown.
    pub fn engines(&self) -> Vec<EngineHandle> {
        let mut engines = vec![self.active().engine.clone()];
        engines.extend(self.fallback.as_ref().map(|f| f.model.engine.clone()));
        engines
    }
}

/// Wait until no request holds `model` any more, then stop its engine.
async fn retire(model: Arc<Loaded>) {
    // Requests hold clones of the Arc; ours is the last one when they are all done.
    while Arc::strong_count(&model) > 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let name = model.name.clone();
    let engine = model.engine.clone();
    if tokio::task::spawn_blocking(move || engine.shutdown()).await.is_err() {
        tracing::error!(model = %name, "stopping the previous model's engine failed");
    } else {
        tracing::info!(model = %name, "previous model drained and stopped");
    }
}
