//! Live policy reload: the active table, how a candidate replaces it, and
//! the triggers that ask for a candidate (file events, SIGHUP, a periodic
//! check).
//!
//! A candidate is read whole, verified exactly as at start-up (header,
//! checksum, version, content, disabled actions) and only then swapped in
//! atomically; requests that start after the swap decide with it, tunnels
//! already open are never touched. A candidate that fails — truncated,
//! half-written, corrupt, wrong version, disabled action, empty, deleted —
//! is refused with a log line naming the file and the reason, and the
//! active table keeps serving. This module never serves traffic.
//!
//! Which candidates are acceptable (signatures, rollback) is decided in
//! [`crate::policy_trust::admit`]; a table fetched from `--policy-url` is
//! offered through [`PolicyState::offer`], the same path a file reload takes.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use egress_policy::policy::ActionSet;
use egress_policy::table;
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
pub use crate::policy_trust::ActivePolicy;
use crate::policy_trust::{self, TrustSettings};

/// What the last fetch did, for `/policy` and `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchResult {
    /// A new table was fetched, verified and swapped in.
    Updated,
    /// 304, or the same bytes as the active table.
    NotModified,
    /// Nothing fetched, or what was fetched was refused.
    Failed,
}

impl FetchResult {
    pub const ALL: [FetchResult; 3] = [FetchResult::Updated, FetchResult::NotModified, FetchResult::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            FetchResult::Updated => "updated",
            FetchResult::NotModified => "not_modified",
            FetchResult::Failed => "failed",
        }
    }
}

/// The last fetch: when, what, and the error if it failed.
#[derive(Debug, Default)]
pub struct FetchLog {
    last: Mutex<Option<(SystemTime, FetchResult, Option<String>)>>,
}

impl FetchLog {
    pub fn last(&self) -> Option<(SystemTime, FetchResult, Option<String>)> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    pub(crate) fn record(&self, result: FetchResult, error: Option<String>) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some((SystemTime::now(), result, error));
        }
    }
}

/// Where candidate tables come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySource {
    /// The `--policy` file (reloaded on events, SIGHUP, the periodic check).
    File,
    /// Polled from `--policy-url`.
    Url(String),
}

/// Counters and the last outcome of each kind, for logs, `/policy` and metrics.
#[derive(Clone, Debug, Default)]
pub struct ReloadStatus {
    pub successes: u64,
    pub failures: u64,
    pub unchanged: u64,
    pub last_success: Option<SystemTime>,
    pub last_failure: Option<(SystemTime, String)>,
    /// The latest attempt of any kind: when, its result, and the error if refused.
    pub last_attempt: Option<(SystemTime, &'static str, Option<String>)>,
}

impl ReloadStatus {
    /// Attempts by result (`swapped`, `unchanged`, `refused`), for `/policy` and `/metrics`.
    pub fn counts(&self) -> [(&'static str, u64); 3] {
        [("swapped", self.successes), ("unchanged", self.unchanged), ("refused", self.failures)]
    }
}

/// What one reload attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Swapped { old: String, new: String },
    Unchanged,
    Refused(String),
}

impl ReloadOutcome {
    /// `swapped`, `unchanged` or `refused`: for `/policy` and metrics.
    pub fn result(&self) -> &'static str {
        match self {
            ReloadOutcome::Swapped { .. } => "swapped",
            ReloadOutcome::Unchanged => "unchanged",
            ReloadOutcome::Refused(_) => "refused",
        }
    }
}

/// The active policy, swappable while requests read it.
#[derive(Debug)]
pub struct PolicyState {
    path: PathBuf,
    source: PolicySource,
    trust: TrustSettings,
    /// The fetcher's record, for a URL source.
    fetch: Option<Arc<FetchLog>>,
    disabled: ActionSet,
    active: ArcSwap<ActivePolicy>,
    status: Mutex<ReloadStatus>,
    /// Serialises reload attempts (events, SIGHUP and the timer may coincide).
    reloading: Mutex<()>,
    metrics: Arc<Metrics>,
}

impl PolicyState {
    /// Loads the initial table; failure here stops start-up. `metrics`
    /// hears of every reload and of every table that becomes active.
    pub fn load(path: &Path, disabled: ActionSet, metrics: Arc<Metrics>) -> Result<Self, table::TableError> {
        Self::load_trusted(path, disabled, TrustSettings::default(), metrics).map_err(|e| match e {
            policy_trust::Refused::Table(e) => e,
            // Without keys nothing but the table itself is checked.
            other => table::TableError::Invalid(other.to_string()),
        })
    }

    /// Loads the initial table from the `--policy` file, checked against `trust`.
    pub fn load_trusted(
        path: &Path,
        disabled: ActionSet,
        trust: TrustSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, policy_trust::Refused> {
        let bytes = table::read_bytes(path)?;
        let active = policy_trust::admit(&bytes, disabled, &trust, None).map_err(|e| match e {
            policy_trust::Refused::Table(table::TableError::LooksLikeYaml(_)) => {
                table::TableError::LooksLikeYaml(path.display().to_string()).into()
            }
            other => other,
        })?;
        Ok(Self::start(active, path, PolicySource::File, trust, None, disabled, metrics))
    }

    /// The initial table from bytes fetched from (or cached for) a URL.
    /// `path` is the cache file, shown as `policy_file`.
    pub fn from_fetched(
        bytes: &[u8],
        path: &Path,
        url: &str,
        disabled: ActionSet,
        trust: TrustSettings,
        fetch: Arc<FetchLog>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, policy_trust::Refused> {
        let active = policy_trust::admit(bytes, disabled, &trust, None)?;
        Ok(Self::start(active, path, PolicySource::Url(url.to_owned()), trust, Some(fetch), disabled, metrics))
    }

    fn start(
        active: ActivePolicy,
        path: &Path,
        source: PolicySource,
        trust: TrustSettings,
        fetch: Option<Arc<FetchLog>>,
        disabled: ActionSet,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.policy_activated(&active.table);
        PolicyState {
            path: path.to_path_buf(),
            source,
            trust,
            fetch,
            disabled,
            active: ArcSwap::from_pointee(active),
            status: Mutex::new(ReloadStatus::default()),
            reloading: Mutex::new(()),
            metrics,
        }
    }

    /// Where candidates come from.
    pub fn source(&self) -> &PolicySource {
        &self.source
    }

    /// The signature requirements every candidate is checked against.
    pub fn trust(&self) -> &TrustSettings {
        &self.trust
    }

    /// The fetcher's record, for a URL source.
    pub fn fetch_log(&self) -> Option<&FetchLog> {
        self.fetch.as_deref()
    }

    /// The table in service now. Cheap; hold it for one request.
    pub fn current(&self) -> Arc<ActivePolicy> {
        self.active.load_full()
    }

    /// Operator-disabled actions every table is checked against.
    pub fn disabled(&self) -> ActionSet {
        self.disabled
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Reads the file again and swaps it in if it verifies and differs.
    pub fn reload(&self, trigger: &str) -> ReloadOutcome {
        let bytes = table::read_bytes(&self.path).map_err(|e| e.to_string());
        self.consider(bytes.as_deref().map_err(String::as_str), trigger)
    }

    /// Offers fetched bytes: the same checks and swap as a file reload.
    pub fn offer(&self, bytes: &[u8], trigger: &str) -> ReloadOutcome {
        self.consider(Ok(bytes), trigger)
    }

    fn consider(&self, bytes: Result<&[u8], &str>, trigger: &str) -> ReloadOutcome {
        let _serial = self.reloading.lock();
        let old = self.current();
        let outcome = match bytes {
            Err(e) => ReloadOutcome::Refused(e.to_owned()),
            Ok(bytes) if <[u8; 32]>::from(Sha256::digest(bytes)) == old.file_sha256 => ReloadOutcome::Unchanged,
            Ok(bytes) => match policy_trust::admit(bytes, self.disabled, &self.trust, Some(&old)) {
                Err(e) => ReloadOutcome::Refused(e.to_string()),
                Ok(active) => {
                    let new = active.table.revision().to_owned();
                    self.metrics.policy_activated(&active.table);
                    self.active.store(Arc::new(active));
                    ReloadOutcome::Swapped { old: old.table.revision().to_owned(), new }
                }
            },
        };
        let now = SystemTime::now();
        if let Ok(mut status) = self.status.lock() {
            let error = match &outcome {
                ReloadOutcome::Refused(reason) => Some(reason.clone()),
                _ => None,
            };
            status.last_attempt = Some((now, outcome.result(), error));
            match &outcome {
                ReloadOutcome::Swapped { .. } => {
                    status.successes += 1;
                    status.last_success = Some(now);
                }
                ReloadOutcome::Unchanged => status.unchanged += 1,
                ReloadOutcome::Refused(reason) => {
                    status.failures += 1;
                    status.last_failure = Some((now, reason.clone()));
                }
            }
        }
        let file = match &self.source {
            PolicySource::File => self.path.display().to_string(),
            PolicySource::Url(url) => url.clone(),
        };
        match &outcome {
            ReloadOutcome::Swapped { old, new } => {
                tracing::info!(%file, trigger, old_revision = %old, new_revision = %new, "policy reloaded");
            }
            ReloadOutcome::Unchanged => {
                tracing::debug!(%file, trigger, revision = %old.table.revision(), "policy unchanged");
            }
            ReloadOutcome::Refused(reason) => tracing::warn!(
                %file,
                trigger,
                reason = %reason,
                active_revision = %old.table.revision(),
                "policy reload refused; the active policy keeps serving"
            ),
        }
        outcome
    }
}

/// How reloads are triggered.
#[derive(Clone, Copy, Debug)]
pub struct ReloadSettings {
    /// Quiet time after the last file event before reading the file; a
    /// steady stream of events holds a reload back by at most
    /// [`ReloadSettings::max_wait`].
    pub debounce: Duration,
    /// Periodic re-read for filesystems that send no events; `None` disables it.
    pub periodic: Option<Duration>,
}

/// How many quiet periods a steady stream of file events may hold a reload back.
const MAX_WAIT_IN_DEBOUNCES: u32 = 5;

impl ReloadSettings {
    /// The longest a reload waits after the first file event of a burst,
    /// however many follow: `MAX_WAIT_IN_DEBOUNCES` quiet periods (500 ms
    /// with the default 100 ms), so a file written without pause still
    /// reloads, while a deliberately long debounce still holds events back.
    pub fn max_wait(&self) -> Duration {
        self.debounce.saturating_mul(MAX_WAIT_IN_DEBOUNCES)
    }
}

impl Default for ReloadSettings {
    fn default() -> Self {
        ReloadSettings { debounce: Duration::from_millis(100), periodic: Some(Duration::from_secs(30)) }
    }
}

/// Watches for reasons to reload until `stop` resolves. The watcher is on
/// the file's directory (and the symlink target's directory), because
/// editors and Kubernetes replace files by rename and by swapping a `..data`
/// symlink, which a watch on the file itself would miss. Only events that
/// concern the policy count (see `Interest`): other files in the same
/// directory, such as a log written without pause, never delay a reload.
pub async fn watch(
    state: Arc<PolicyState>,
    settings: ReloadSettings,
    mut sighup: mpsc::Receiver<()>,
    stop: impl Future<Output = ()>,
) {
    let (events_tx, mut events) = mpsc::channel::<()>(64);
    let interest = Arc::new(Mutex::new(Interest::default()));
    let filter = Arc::clone(&interest);
    let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let concerns_policy = match &event {
            Ok(event) => filter.lock().map_or(true, |interest| interest.concerns(event)),
            Err(_) => false,
        };
        if concerns_policy {
            // A full channel already means "something changed".
            let _ = events_tx.try_send(());
        }
    }) {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(%error, "cannot watch the policy file; relying on SIGHUP and the periodic check");
            None
        }
    };
    let mut watched: Vec<PathBuf> = Vec::new();
    if let Some(w) = watcher.as_mut() {
        rewatch(w, state.path(), &mut watched, &interest);
    }
    let periodic = settings.periodic;
    let mut ticker = tokio::time::interval(periodic.unwrap_or(Duration::from_secs(3600)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    tokio::pin!(stop);
    // File events restart a quiet-period timer; the reload happens when it
    // runs out, or at the latest `max_wait` after the burst's first event.
    // SIGHUP and the periodic check do not wait for it.
    let mut quiet_until: Option<tokio::time::Instant> = None;
    let mut burst_started: Option<tokio::time::Instant> = None;
    loop {
        let debounce_done = async {
            match quiet_until {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let trigger = tokio::select! {
            () = &mut stop => return,
            Some(()) = sighup.recv() => "SIGHUP",
            _ = ticker.tick(), if periodic.is_some() => "periodic check",
            Some(()) = events.recv() => {
                let now = tokio::time::Instant::now();
                let first = *burst_started.get_or_insert(now);
                quiet_until = Some((now + settings.debounce).min(first + settings.max_wait()));
                continue;
            }
            () = debounce_done => "file event",
        };
        if trigger == "file event" {
            quiet_until = None;
            burst_started = None;
        }
        // `systemctl reload` (SIGHUP) waits for the reload to end when systemd is told of it.
        if trigger == "SIGHUP" {
            crate::systemd::reloading();
        }
        let reloaded = {
            let state = Arc::clone(&state);
            tokio::task::spawn_blocking(move || state.reload(trigger)).await
        };
        if trigger == "SIGHUP" {
            crate::systemd::reload_done();
        }
        if reloaded.is_err() {
            tracing::error!("policy reload task failed");
        }
        // A symlink may now point into a new directory (Kubernetes `..data`).
        if let Some(w) = watcher.as_mut() {
            rewatch(w, state.path(), &mut watched, &interest);
        }
    }
}

/// The paths whose events concern the policy, as the watcher reports them
/// (each a watched directory joined with a name): the policy path itself,
/// the Kubernetes `..data` link beside it, the file the path resolves to,
/// and the watched directories themselves (removed or replaced).
#[derive(Debug, Default)]
struct Interest {
    paths: Vec<PathBuf>,
}

impl Interest {
    fn for_policy(path: &Path, policy_dir: &Path, resolved: Option<(&Path, &Path)>) -> Self {
        let mut paths = vec![policy_dir.to_path_buf(), policy_dir.join(KUBERNETES_DATA_LINK)];
        if let Some(name) = path.file_name() {
            paths.push(policy_dir.join(name));
        }
        if let Some((resolved, resolved_dir)) = resolved {
            paths.push(resolved_dir.to_path_buf());
            if let Some(name) = resolved.file_name() {
                paths.push(resolved_dir.join(name));
            }
        }
        Interest { paths }
    }

    /// Whether `event` may have changed what the policy path reads. Events
    /// that name no path (a queue overflow asks for a rescan) count. Reads
    /// never change it: counting them would make every reload (which opens
    /// the file) trigger the next one.
    fn concerns(&self, event: &notify::Event) -> bool {
        use notify::event::{AccessKind, AccessMode, EventKind};
        if let EventKind::Access(access) = event.kind
            && access != AccessKind::Close(AccessMode::Write)
        {
            return false;
        }
        event.need_rescan() || event.paths.is_empty() || event.paths.iter().any(|p| self.paths.contains(p))
    }
}

/// The link the kubelet swaps to update every file of a mounted ConfigMap at once.
const KUBERNETES_DATA_LINK: &str = "..data";

/// Watches the directory of `path` and, if `path` is a symlink, the
/// directory of what it resolves to; `interest` learns the paths whose
/// events count.
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    path: &Path,
    watched: &mut Vec<PathBuf>,
    interest: &Mutex<Interest>,
) {
    let mut wanted: Vec<PathBuf> = Vec::new();
    let parent = |p: &Path| match p.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let policy_dir = parent(path);
    wanted.push(policy_dir.clone());
    let resolved = std::fs::canonicalize(path).ok();
    let resolved_dir = resolved.as_deref().map(parent);
    if let Some(dir) = &resolved_dir
        && !wanted.contains(dir)
    {
        wanted.push(dir.clone());
    }
    // Before the watches change, so no event of a new watch is judged by the old paths.
    if let Ok(mut interest) = interest.lock() {
        *interest = Interest::for_policy(path, &policy_dir, resolved.as_deref().zip(resolved_dir.as_deref()));
    }
    for dir in watched.iter() {
        if !wanted.contains(dir) {
            let _ = watcher.unwatch(dir);
        }
    }
    let mut now_watched = Vec::with_capacity(wanted.len());
    for dir in wanted {
        if watched.contains(&dir) {
            now_watched.push(dir);
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => now_watched.push(dir),
            // Retried after the next reload attempt (the directory may appear later).
            Err(error) => tracing::warn!(dir = %dir.display(), %error, "cannot watch the policy directory"),
        }
    }
    *watched = now_watched;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;
    use egress_policy::acl;

    fn table(action: &str) -> Vec<u8> {
        let yaml = format!("version: v1\nservices: []\ndefault:\n  project: p\n  action: {action}\n");
        let policy = acl::check_source("t.yaml", &yaml, ActionSet::default()).policy.unwrap();
        table::encode(&policy, &table::Metadata::for_source(Path::new("t.yaml"), yaml.as_bytes(), ActionSet::default()))
    }

    #[test]
    fn outcomes_and_counters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.bin");
        std::fs::write(&path, table("enforce")).unwrap();
        let disabled: ActionSet = [egress_policy::policy::Action::Open].into_iter().collect();
        let state = PolicyState::load(&path, disabled, Arc::new(Metrics::new(None, false))).unwrap();
        let first = state.current().table.revision().to_owned();

        assert_eq!(state.reload("test"), ReloadOutcome::Unchanged);
        std::fs::write(&path, table("report")).unwrap();
        let ReloadOutcome::Swapped { old, new } = state.reload("test") else { panic!("expected a swap") };
        assert_eq!(old, first);
        assert_eq!(new, state.current().table.revision());

        std::fs::write(&path, table("open")).unwrap();
        let ReloadOutcome::Refused(reason) = state.reload("test") else { panic!("disabled action must be refused") };
        assert!(reason.contains("open"), "{reason}");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(state.reload("test"), ReloadOutcome::Refused(_)));
        assert_eq!(state.current().table.revision(), new, "the active table keeps serving");

        let status = state.status();
        assert_eq!((status.successes, status.failures, status.unchanged), (1, 2, 1));
        assert!(status.last_success.is_some() && status.last_failure.is_some());
    }

    #[test]
    fn only_events_about_the_policy_concern_it() {
        use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
        let event = |paths: &[&str]| {
            let mut event = notify::Event::new(EventKind::Modify(ModifyKind::Any));
            event.paths = paths.iter().map(PathBuf::from).collect();
            event
        };
        let interest = Interest::for_policy(
            Path::new("/etc/policy/policy.bin"),
            Path::new("/etc/policy"),
            Some((Path::new("/etc/policy/..2026_1/policy.bin"), Path::new("/etc/policy/..2026_1"))),
        );
        for concerned in [
            &["/etc/policy/policy.bin"][..],
            &["/etc/policy/..data"],
            &["/etc/policy/..data_tmp", "/etc/policy/..data"],
            &["/etc/policy/..2026_1/policy.bin"],
            &["/etc/policy/..2026_1"],
            &["/etc/policy"],
            &[],
        ] {
            assert!(interest.concerns(&event(concerned)), "{concerned:?}");
        }
        for unrelated in [&["/etc/policy/proxyd.log"][..], &["/etc/policy/..data_tmp"], &["/etc/policy/..2026_1/other"]]
        {
            assert!(!interest.concerns(&event(unrelated)), "{unrelated:?}");
        }
        // The proxy's own reads of the policy are no reason to read it again; a finished write is.
        let mut read = event(&["/etc/policy/policy.bin"]);
        read.kind = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(!interest.concerns(&read));
        read.kind = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert!(!interest.concerns(&read));
        read.kind = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(interest.concerns(&read));
        let rescan = notify::Event::new(EventKind::Create(CreateKind::Any)).set_flag(notify::event::Flag::Rescan);
        assert!(interest.concerns(&rescan));
        assert_eq!(ReloadSettings::default().max_wait(), Duration::from_millis(500));
    }

    #[test]
    fn a_bad_table_at_start_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.bin");
        std::fs::write(&path, b"").unwrap();
        assert!(PolicyState::load(&path, ActionSet::default(), Arc::new(Metrics::new(None, false))).is_err());
        std::fs::write(&path, "version: v1\nservices: []\n").unwrap();
        let err = PolicyState::load(&path, ActionSet::default(), Arc::new(Metrics::new(None, false))).unwrap_err();
        assert!(err.to_string().contains("policyc compile"), "{err}");
    }
}
