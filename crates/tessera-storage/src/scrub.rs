//! The scrubber: re-reads every shard file of the node at a bounded rate
//! and checks it against the BLAKE3 hash in its header, so that bit rot is
//! found and repaired while the stripe still has its other shards, not
//! when a client finally reads it.
//!
//! One pass walks every data directory, sub-directory by sub-directory,
//! and streams each shard file through the hasher in [`CHUNK`]-byte reads
//! (never more than one chunk in memory), pacing the reads with a
//! [`Pacer`] so that the pass never reads faster than `scrub-rate`. A file
//! that fails (wrong hash, wrong size, bad header, a media error) is
//! quarantined exactly as the read path does it, and reported to meta as
//! `ReportShards{Corrupt}` in batches; reports meta could not take are
//! kept (bounded) and retried. The next pass starts when `scrub-period-ms`
//! has elapsed since the start of the last one.
//!
//! Where the pass is (its start time and the next sub-directory) is kept
//! in `<first data dir>/scrub-state` (every second at most), so that a
//! restarted node resumes its pass, or waits out the period after a
//! complete one, instead of re-reading everything on every restart.
//!
//! Shard files are immutable and appear by rename, so a listed file is
//! complete. A file deleted while it is scrubbed is skipped: the scrubber
//! holds it open (the bytes stay readable), and the quarantine checks that
//! the name still holds the inode that was found bad before moving it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tessera_types::repair::{ProblemKind, ShardProblem};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::durable;
use crate::error::ShardKey;
use crate::meta_api::NodeMeta;
use crate::metrics::StorageMetrics;
use crate::store::{blocking, Quarantine, ShardHeader, ShardStore, HEADER_LEN};
use crate::throttle::{Pacer, Rate};
use crate::StorageError;

/// Bytes read (and held) at a time.
pub(crate) const CHUNK: usize = 1 << 20;
/// Most problems sent in one `ReportShards`.
const REPORT_BATCH: usize = 1000;
/// Reports kept while meta is unreachable; beyond this the oldest are
/// dropped (their files are quarantined, so a read or a repair check still
/// finds those shards missing).
const MAX_PENDING: usize = 50_000;
/// After a failed report, wait this long before trying again.
const REPORT_RETRY: Duration = Duration::from_secs(30);
/// The first pass starts this long after the node (or after one period,
/// if shorter): a node that was just restarted has other work first.
const FIRST_PASS_AFTER: Duration = Duration::from_secs(30);
/// Sub-directories of a data directory's `shards/` (the first byte of
/// the stripe id): the unit of progress.
const SUBDIRS: usize = 256;

/// The file that keeps the pass position, in the first data directory.
const STATE_FILE: &str = "scrub-state";
/// Version of its format.
const STATE_VERSION: u32 = 1;
/// The position is saved at most this often (and at the end of a pass).
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Where the current (or last) pass is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubState {
    /// Wall clock at the start of the pass.
    pub started_ms: i64,
    /// Data directories when the pass started (a changed list restarts
    /// the pass).
    pub dirs: usize,
    /// The next unit (data directory x 256 + sub-directory) to scrub;
    /// `dirs * 256` = the pass is complete.
    pub next_unit: usize,
}

impl ScrubState {
    fn encode(&self) -> String {
        format!(
            "tessera-scrub-state {STATE_VERSION}\n{} {} {}\n",
            self.started_ms, self.dirs, self.next_unit
        )
    }

    /// `None` for anything that is not a state this version wrote.
    fn decode(text: &str) -> Option<ScrubState> {
        let mut lines = text.lines();
        if lines.next()? != format!("tessera-scrub-state {STATE_VERSION}") {
            return None;
        }
        let mut f = lines.next()?.split_ascii_whitespace();
        let st = ScrubState {
            started_ms: f.next()?.parse().ok()?,
            dirs: f.next()?.parse().ok()?,
            next_unit: f.next()?.parse().ok()?,
        };
        (st.next_unit <= st.dirs * SUBDIRS).then_some(st)
    }

    /// The state saved in data directory `dir`, if any.
    pub fn load(dir: &Path) -> Option<ScrubState> {
        let text = std::fs::read_to_string(dir.join(STATE_FILE)).ok()?;
        let st = ScrubState::decode(&text);
        if st.is_none() {
            tracing::warn!(file = %dir.join(STATE_FILE).display(), "ignoring an unreadable scrub state");
        }
        st
    }

    fn save(&self, dir: &Path) -> io::Result<()> {
        durable::write_file(&dir.join(STATE_FILE), self.encode().as_bytes())
    }
}

/// Figures of one pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassSummary {
    /// Shard files checked to the end (good or bad).
    pub shards: u64,
    /// Bytes read (headers included).
    pub bytes: u64,
    /// Files found bad and quarantined (or left in place when the
    /// quarantine failed): reported to meta.
    pub corrupt: u64,
    /// Files that disappeared while listed or scrubbed (deleted by GC or
    /// the orphan scan, quarantined by a read): skipped.
    pub vanished: u64,
    /// Files that could not be checked for a reason that is not theirs
    /// (too many open files, ...): tried again next pass.
    pub errors: u64,
    pub took: Duration,
}

/// What one file turned out to be.
enum Verdict {
    Good,
    /// Quarantined (or left in place if that failed) and queued for a
    /// report.
    Bad,
    Vanished,
    /// Not the file's fault; skip it this pass.
    Error(io::Error),
}

/// A shard file being hashed, chunk by chunk, on the blocking pool.
struct Cursor {
    file: File,
    header: ShardHeader,
    hasher: blake3::Hasher,
    left: u64,
    buf: Vec<u8>,
}

/// A corrupt shard not yet reported to meta.
struct Pending {
    problem: ShardProblem,
    /// Its file in quarantine (named `.unreported` until reported).
    quarantined: Option<PathBuf>,
}

/// The background scrubber of one storage node.
pub struct Scrubber<M> {
    store: Arc<ShardStore>,
    meta: Option<M>,
    period: Duration,
    rate: Rate,
    metrics: Arc<StorageMetrics>,
    pending: Vec<Pending>,
    /// When a report last failed (reports wait [`REPORT_RETRY`] after).
    report_failed_at: Option<Instant>,
    first_pass_after: Duration,
}

impl<M: NodeMeta> Scrubber<M> {
    /// A scrubber that reports to `meta` (`None`: quarantine only).
    pub fn new(
        store: Arc<ShardStore>,
        meta: Option<M>,
        period: Duration,
        rate: Rate,
        metrics: Arc<StorageMetrics>,
    ) -> Self {
        Scrubber {
            store,
            meta,
            period,
            rate,
            metrics,
            pending: Vec::new(),
            report_failed_at: None,
            first_pass_after: period.min(FIRST_PASS_AFTER),
        }
    }

    /// How long after start the first pass (or the resumption of an
    /// interrupted one) begins; by default the period, at most 30 s.
    pub fn first_pass_after(mut self, delay: Duration) -> Self {
        self.first_pass_after = delay;
        self
    }

    /// Problems found but not reported yet.
    pub fn pending_reports(&self) -> usize {
        self.pending.len()
    }

    /// Scrubs pass after pass until `shutdown` is cancelled, resuming the
    /// pass a restart interrupted.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(
            period_ms = self.period.as_millis() as u64,
            rate = self.rate.get(),
            "scrubber started"
        );
        self.load_unreported().await;
        if !self.flush(&shutdown, false).await {
            return;
        }
        let store = self.store.clone();
        let saved = blocking(move || Ok(ScrubState::load(store.first_dir())))
            .await
            .ok()
            .flatten();
        let total = self.store.dir_count() * SUBDIRS;
        // (pass start, first unit) of the pass to run next.
        let mut resume = None;
        let mut wait = self.first_pass_after;
        match saved {
            Some(st) if st.dirs == self.store.dir_count() && st.next_unit < total => {
                tracing::info!(
                    progress_permille = st.next_unit * 1000 / total.max(1),
                    "resuming an interrupted scrub pass"
                );
                resume = Some((st.started_ms, st.next_unit));
            }
            Some(st) if st.next_unit == st.dirs * SUBDIRS => {
                wait = wait.max(self.until_next_pass(st.started_ms));
            }
            _ => {}
        }
        loop {
            if !self.idle(wait, &shutdown).await {
                break;
            }
            let (started_ms, from) = resume.take().unwrap_or((tessera_types::now_millis(), 0));
            let Some(s) = self.pass_from(from, started_ms, &shutdown).await else {
                break;
            };
            tracing::info!(
                shards = s.shards,
                bytes = s.bytes,
                corrupt = s.corrupt,
                vanished = s.vanished,
                errors = s.errors,
                took_ms = s.took.as_millis() as u64,
                mb_per_sec = s.bytes as f64 / 1e6 / s.took.as_secs_f64().max(1e-3),
                "scrub pass done"
            );
            if s.took > self.period {
                tracing::warn!(
                    took_ms = s.took.as_millis() as u64,
                    period_ms = self.period.as_millis() as u64,
                    "a scrub pass took longer than scrub-period-ms: raise scrub-rate or the period"
                );
            }
            wait = self.until_next_pass(started_ms);
        }
        tracing::debug!("scrubber stopped");
    }

    /// Time left until one period after `started_ms` (never more than a
    /// period, whatever the wall clock did).
    fn until_next_pass(&self, started_ms: i64) -> Duration {
        let elapsed = tessera_types::now_millis()
            .saturating_sub(started_ms)
            .max(0) as u64;
        self.period
            .saturating_sub(Duration::from_millis(elapsed))
            .min(self.period)
    }

    /// Waits `wait`, retrying pending reports meanwhile; `false` if
    /// `shutdown` came first.
    async fn idle(&mut self, wait: Duration, shutdown: &CancellationToken) -> bool {
        let until = Instant::now() + wait;
        loop {
            let wake = if self.pending.is_empty() {
                until
            } else {
                until.min(Instant::now() + REPORT_RETRY)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep_until(wake) => {}
            }
            if Instant::now() >= until {
                return true;
            }
            if !self.flush(shutdown, true).await {
                return false;
            }
        }
    }

    /// One full pass over every shard file; `None` if `shutdown` came
    /// first.
    pub async fn pass(&mut self, shutdown: &CancellationToken) -> Option<PassSummary> {
        self.pass_from(0, tessera_types::now_millis(), shutdown)
            .await
    }

    /// The rest of a pass that started at `started_ms`, from unit `from`,
    /// saving the position as it goes.
    async fn pass_from(
        &mut self,
        from: usize,
        started_ms: i64,
        shutdown: &CancellationToken,
    ) -> Option<PassSummary> {
        let started = Instant::now();
        let mut pacer = Pacer::new(self.rate.clone());
        let mut s = PassSummary::default();
        let dirs = self.store.dir_count();
        let total = (dirs * SUBDIRS).max(1);
        let mut save_failed = false;
        let mut saved_at = Instant::now();
        for unit in from..dirs * SUBDIRS {
            self.metrics.scrub_progress((unit * 1000 / total) as u32);
            let (dir, sub) = (unit / SUBDIRS, (unit % SUBDIRS) as u8);
            self.scrub_subdir(dir, sub, &mut pacer, &mut s, shutdown)
                .await?;
            let last = unit + 1 == dirs * SUBDIRS;
            if !last && saved_at.elapsed() < SAVE_EVERY {
                continue;
            }
            saved_at = Instant::now();
            let state = ScrubState {
                started_ms,
                dirs,
                next_unit: unit + 1,
            };
            let store = self.store.clone();
            let saved =
                blocking(move || state.save(store.first_dir()).map_err(StorageError::io)).await;
            if let Err(error) = saved {
                if !save_failed {
                    tracing::warn!(%error, "could not save the scrub position; a restart will start the pass over");
                    save_failed = true;
                }
            }
        }
        if !self.flush(shutdown, false).await {
            return None;
        }
        s.took = started.elapsed();
        self.metrics
            .scrub_pass_done(s.took.as_millis().try_into().unwrap_or(u64::MAX));
        Some(s)
    }

    /// Scrubs the shard files of one sub-directory; `None` if `shutdown`
    /// came first.
    async fn scrub_subdir(
        &mut self,
        dir: usize,
        sub: u8,
        pacer: &mut Pacer,
        s: &mut PassSummary,
        shutdown: &CancellationToken,
    ) -> Option<()> {
        let store = self.store.clone();
        let listing =
            match blocking(move || store.list_shards(dir, sub).map_err(StorageError::io)).await {
                Ok(l) => l,
                Err(error) => {
                    tracing::warn!(dir, sub, %error, "scrubber could not list a shard directory");
                    s.errors += 1;
                    return Some(());
                }
            };
        for (key, path) in listing {
            if shutdown.is_cancelled() {
                return None;
            }
            match self.check(key, path, pacer, s, shutdown).await? {
                Verdict::Good => {
                    s.shards += 1;
                    self.metrics.scrub_checked();
                }
                Verdict::Bad => {
                    s.shards += 1;
                    s.corrupt += 1;
                    self.metrics.scrub_checked();
                    self.metrics.scrub_corrupt();
                }
                Verdict::Vanished => s.vanished += 1,
                Verdict::Error(error) => {
                    tracing::warn!(shard = %key, %error, "scrubber could not check a shard; next pass will");
                    s.errors += 1;
                }
            }
        }
        // Report what this sub-directory found now, not at the end of a
        // pass that may last hours.
        if !self.flush(shutdown, true).await {
            return None;
        }
        Some(())
    }

    /// Checks one file, pacing the reads; quarantines and queues a report
    /// if it is bad. `None` if `shutdown` came first.
    async fn check(
        &mut self,
        key: ShardKey,
        path: PathBuf,
        pacer: &mut Pacer,
        s: &mut PassSummary,
        shutdown: &CancellationToken,
    ) -> Option<Verdict> {
        let p = path.clone();
        let opened = blocking(move || Ok(open(&p))).await;
        let mut cursor = match opened {
            Ok(Opened::Ready(c)) => c,
            Ok(Opened::Vanished) => return Some(Verdict::Vanished),
            Ok(Opened::Error(e)) => return Some(Verdict::Error(e)),
            Ok(Opened::Unreadable(reason)) => {
                let store = self.store.clone();
                let r = reason.clone();
                let q = blocking(move || Ok(store.quarantine_path(key, &path, &r, true))).await;
                return Some(self.found_bad(key, reason, q));
            }
            Ok(Opened::Bad(file, reason)) => {
                return Some(self.quarantine(key, path, file, reason).await)
            }
            Err(e) => return Some(Verdict::Error(io::Error::other(e.to_string()))),
        };
        self.pace(pacer, HEADER_LEN as u64, s, shutdown).await?;
        while cursor.left > 0 {
            let stepped = blocking(move || Ok(step(cursor))).await;
            let (c, n, failure) = match stepped {
                Ok(r) => r,
                Err(e) => return Some(Verdict::Error(io::Error::other(e.to_string()))),
            };
            cursor = c;
            self.pace(pacer, n, s, shutdown).await?;
            if let Some(e) = failure {
                if !is_media_error(&e) {
                    return Some(Verdict::Error(e));
                }
                let reason = format!("read error: {e}");
                return Some(self.quarantine(key, path, cursor.file, reason).await);
            }
        }
        if cursor.hasher.finalize().as_bytes() == &cursor.header.blake3 {
            return Some(Verdict::Good);
        }
        let reason = "BLAKE3 does not match the file header (found by the scrubber)".to_string();
        Some(self.quarantine(key, path, cursor.file, reason).await)
    }

    async fn quarantine(
        &mut self,
        key: ShardKey,
        path: PathBuf,
        file: File,
        reason: String,
    ) -> Verdict {
        let store = self.store.clone();
        let r = reason.clone();
        let q = blocking(move || Ok(store.quarantine(key, &path, &file, &r, true))).await;
        self.found_bad(key, reason, q)
    }

    /// Counts `bytes` just read and waits as the rate demands; `None` if
    /// `shutdown` came first.
    async fn pace(
        &self,
        pacer: &mut Pacer,
        bytes: u64,
        s: &mut PassSummary,
        shutdown: &CancellationToken,
    ) -> Option<()> {
        s.bytes += bytes;
        self.metrics.scrub_read(bytes);
        let wait = pacer.book(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        Some(())
    }

    /// Handles the outcome of quarantining a bad file.
    fn found_bad(
        &mut self,
        key: ShardKey,
        reason: String,
        q: Result<Quarantine, StorageError>,
    ) -> Verdict {
        let quarantined = match q {
            // The name no longer holds the bad file: deleted (nothing to
            // repair here), or quarantined by a read (which reports it) or
            // replaced by a good copy.
            Ok(Quarantine::Gone) => return Verdict::Vanished,
            Ok(Quarantine::Done(dest)) => Some(dest),
            // The bytes are bad whether or not they could be moved: report
            // them so the stripe is repaired.
            Ok(Quarantine::Failed) | Err(_) => None,
        };
        tracing::warn!(shard = %key, %reason, "scrubber found a corrupt shard");
        self.queue_report(key, quarantined);
        Verdict::Bad
    }

    fn queue_report(&mut self, key: ShardKey, quarantined: Option<PathBuf>) {
        if self.pending.len() >= MAX_PENDING {
            // Its file keeps its `.unreported` name: the next start
            // reports it.
            self.pending.remove(0);
            tracing::warn!("too many unreported corrupt shards; dropping the oldest report");
        }
        self.pending.push(Pending {
            problem: ShardProblem {
                stripe: key.stripe,
                index: key.index,
                node: self.store.node_id().clone(),
                kind: ProblemKind::Corrupt,
            },
            quarantined,
        });
        self.metrics.scrub_reports_pending(self.pending.len());
    }

    /// Queues the reports a crash (or a node without meta) left undone:
    /// the quarantined files still named `.unreported`.
    pub async fn load_unreported(&mut self) {
        let store = self.store.clone();
        match blocking(move || store.unreported_quarantine().map_err(StorageError::io)).await {
            Ok(files) => {
                if !files.is_empty() {
                    tracing::info!(
                        shards = files.len(),
                        "reporting corrupt shards quarantined before a restart"
                    );
                }
                for (key, path) in files {
                    if !self
                        .pending
                        .iter()
                        .any(|p| p.quarantined.as_ref() == Some(&path))
                    {
                        self.queue_report(key, Some(path));
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not list the quarantine for unreported shards");
            }
        }
    }

    /// Sends pending reports to meta. With `respect_backoff`, does nothing
    /// within [`REPORT_RETRY`] of a failure. Returns `false` if `shutdown`
    /// came first.
    async fn flush(&mut self, shutdown: &CancellationToken, respect_backoff: bool) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let Some(meta) = &self.meta else {
            // Nobody to tell: the quarantine is all a node without meta can do.
            self.pending.clear();
            self.metrics.scrub_reports_pending(0);
            return true;
        };
        if respect_backoff
            && self
                .report_failed_at
                .is_some_and(|t| t.elapsed() < REPORT_RETRY)
        {
            return true;
        }
        // `meta` borrows `self`: take the list out while sending.
        let mut pending = std::mem::take(&mut self.pending);
        while !pending.is_empty() {
            let n = pending.len().min(REPORT_BATCH);
            let result = tokio::select! {
                _ = shutdown.cancelled() => {
                    self.pending = pending;
                    return false;
                }
                r = meta.report_shards(pending[..n].iter().map(|p| p.problem.clone()).collect()) => r,
            };
            match result {
                Ok(()) => {
                    tracing::info!(shards = n, "reported corrupt shards to meta");
                    let files: Vec<PathBuf> =
                        pending.drain(..n).filter_map(|p| p.quarantined).collect();
                    let marked = blocking(move || {
                        for f in files {
                            ShardStore::mark_reported(&f).map_err(StorageError::io)?;
                        }
                        Ok(())
                    })
                    .await;
                    if let Err(error) = marked {
                        // Reported once more after a restart: harmless.
                        tracing::warn!(%error, "could not mark quarantined shards reported");
                    }
                    self.report_failed_at = None;
                }
                Err(error) => {
                    tracing::warn!(%error, pending = pending.len(), "could not report corrupt shards to meta; will retry");
                    self.report_failed_at = Some(Instant::now());
                    break;
                }
            }
        }
        self.pending = pending;
        self.metrics.scrub_reports_pending(self.pending.len());
        true
    }
}

enum Opened {
    Ready(Box<Cursor>),
    /// No such file any more.
    Vanished,
    /// The file cannot be read at all (media error on open).
    Unreadable(String),
    /// Open, but its header or size is wrong.
    Bad(File, String),
    /// A failure that says nothing about the file.
    Error(io::Error),
}

/// Opens a shard file and checks its header against its size. Blocking.
fn open(path: &std::path::Path) -> Opened {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Opened::Vanished,
        Err(e) if is_media_error(&e) => return Opened::Unreadable(format!("open: {e}")),
        Err(e) => return Opened::Error(e),
    };
    let size = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return Opened::Error(e),
    };
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_media_error(&e) => {
                return Opened::Bad(file, format!("read error in the header: {e}"))
            }
            Err(e) => return Opened::Error(e),
        }
    }
    let (header, format) = match ShardHeader::parse_sized(&head[..got], size) {
        Ok(parsed) => parsed,
        Err(reason) => return Opened::Bad(file, reason),
    };
    if let Err(e) = file.seek(SeekFrom::Start(format.data_offset())) {
        return Opened::Error(e);
    }
    Opened::Ready(Box::new(Cursor {
        file,
        header,
        hasher: blake3::Hasher::new(),
        left: header.length,
        buf: vec![0u8; CHUNK.min(usize::try_from(header.length).unwrap_or(usize::MAX))],
    }))
}

/// Reads and hashes the next chunk. Blocking. Returns the bytes read and
/// the error that stopped the read, if any.
fn step(mut c: Box<Cursor>) -> (Box<Cursor>, u64, Option<io::Error>) {
    let want = c
        .buf
        .len()
        .min(usize::try_from(c.left).unwrap_or(usize::MAX));
    let mut got = 0;
    let mut failure = None;
    while got < want {
        match c.file.read(&mut c.buf[got..want]) {
            Ok(0) => {
                failure = Some(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file ended before the length in its header",
                ));
                break;
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    c.hasher.update(&c.buf[..got]);
    c.left -= got as u64;
    (c, got as u64, failure)
}

/// An error that says the file's bytes cannot be had (as opposed to a
/// resource shortage of this process).
fn is_media_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
        || matches!(
            e.raw_os_error(),
            Some(libc::EIO) | Some(libc::EBADMSG) | Some(libc::ENXIO) | Some(libc::EUCLEAN)
        )
}
