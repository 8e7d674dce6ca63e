//! The copy job: opens, copies and hashes a settled group's files into a staging folder
//! on the blocking pool, checking that nothing changed while it ran.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use super::plan::Known;
use crate::error::{Error, Result};
use crate::inbox::{self, Look};
use crate::registry::{Kind, Version};
use crate::sidecar::{self, MAX_SIDECAR_BYTES, Sidecar};
use crate::store::{self, Staged};

/// A copy job: everything it needs, owned, so it can run on the blocking pool.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) name: String,
    pub(super) next: u32,
    pub(super) store: PathBuf,
    pub(super) root: PathBuf,
    pub(super) inbox: PathBuf,
    pub(super) follow_symlinks: bool,
    pub(super) artifacts: Vec<(String, Look)>,
    pub(super) sidecar: Option<(String, Look)>,
    pub(super) latest: Option<Known>,
    pub(super) latest_sidecar: Option<String>,
    /// The sidecar's fingerprint when it was last looked at.
    pub(super) sidecar_seen: Option<String>,
    /// For each artifact entry, the version its content was last time.
    pub(super) same_source: BTreeMap<String, Known>,
    /// The model's stored files, which a new version's equal files are hard-linked to
    /// instead of kept twice (and, when found before copying, only read).
    pub(super) stored: store::Stored,
    /// The last listing of the model's store folder, as it should look now
    /// ([`store::highest_in_store_since`]).
    pub(super) listed: Option<store::Listed>,
    /// The folders pinned at start: the inbox is opened through it.
    pub(super) layout: Option<Arc<crate::layout::Layout>>,
    /// Whether headers are read for facts (`extract:`).
    pub(super) extract: bool,
}

impl Job {
    /// Whether `entry` no longer looks as it did when `fingerprint` was taken: checked
    /// before and after reading, so a file that changed in between is looked at again,
    /// never half-registered.
    fn changed_since(&self, entry: &str, fingerprint: &str) -> bool {
        inbox::look(&self.inbox, entry, self.follow_symlinks)
            .fingerprint()
            .as_deref()
            != Some(fingerprint)
    }
}

/// A version staged by a job, to be named by the catalog.
#[derive(Debug)]
pub struct NewVersion {
    pub(super) entry: String,
    pub(super) number: u32,
    /// When it was staged: the time its manifest records.
    pub(super) registered_at: String,
    pub(super) kind: Kind,
    pub(super) fingerprint: String,
    pub(super) staged: Staged,
    /// How long copying and hashing it took.
    pub(super) copy_secs: f64,
    /// Bytes of its files hard-linked to files already stored (dedup).
    pub(super) dedup_saved: u64,
    /// Its metrics (the sidecar's and the Trainer's), extracted facts and provenance.
    pub(super) facts: super::facts::Facts,
}

/// A sidecar read by a job.
#[derive(Debug)]
pub struct SidecarRead {
    pub(super) entry: String,
    pub(super) fingerprint: String,
    pub(super) sha256: String,
    pub(super) parsed: Sidecar,
    /// Whether its content is new, i.e. not the one already applied to the latest version.
    pub(super) fresh: bool,
}

impl SidecarRead {
    pub(super) fn metrics(&self) -> crate::registry::Metrics {
        self.parsed
            .metrics
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub(super) fn metadata(&self) -> crate::registry::Metadata {
        self.parsed
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Whether it has something to give a version already registered: metrics or
    /// metadata (a sidecar that only names where the artifact came from, `provenance:`,
    /// has not).
    pub(super) fn gives(&self) -> bool {
        !(self.parsed.source.is_some()
            && self.parsed.metrics.is_empty()
            && self.parsed.metadata.is_empty())
    }
}

/// What a job produced.
#[derive(Debug)]
pub enum JobResult {
    /// Versions to add and entries whose content is already registered.
    Done {
        new: Vec<NewVersion>,
        unchanged: Vec<(String, String, u32)>,
        /// Team mode: versions of the shared catalog that entries in `unchanged` were
        /// found identical to there (its newest live version), taken into the local
        /// catalog when it lacks them (src/ingest/team.rs).
        in_catalog: Vec<Version>,
        /// Boxed: the largest part, and rare.
        sidecar: Option<Box<SidecarRead>>,
        /// The highest number the store holds when it is above the catalog's: versions
        /// the catalog does not know (numbering went above them).
        store_ahead: Option<u32>,
        /// The listing of the model's store folder this job used.
        listed: Option<store::Listed>,
    },
    /// The sidecar is invalid: the artifact waits. (path, message)
    Blocked(String, String),
    /// A file changed while being copied; nothing was kept.
    Changed,
    /// An error; nothing was kept. Retried with backoff.
    Failed(String),
    /// [`JobResult::Failed`], already a `status` problem (a team engine's, which lists
    /// it among the recent errors once): retried the same, not listed again.
    FailedInStatus(String),
    /// Shutdown interrupted it; nothing was kept.
    Cancelled,
    /// A hand-over's copy ended (answered on its own, see `handover.rs`).
    HandedOver(Box<super::handover::Copied>),
}

/// Runs a copy job on the blocking pool; see [`Job`].
/// `done` counts the bytes copied, for `status`.
pub(super) fn run_job(job: Job, cancel: &AtomicBool, done: &AtomicU64) -> JobResult {
    let mut staged_so_far: Vec<Staged> = Vec::new();
    let result = run_job_inner(&job, cancel, done, &mut staged_so_far);
    if !matches!(result, JobResult::Done { .. }) {
        for s in staged_so_far {
            let _ = store::discard(&s.dir);
        }
    }
    result
}

fn run_job_inner(
    job: &Job,
    cancel: &AtomicBool,
    done: &AtomicU64,
    staged_out: &mut Vec<Staged>,
) -> JobResult {
    let relative = |p: &Path| {
        p.strip_prefix(&job.root)
            .map(|r| r.display().to_string())
            .unwrap_or_else(|_| p.display().to_string())
    };
    let mut newest = job.latest.clone();
    // Above every number the catalog and the store (folders and tombstones) hold: a
    // catalog that lost versions must never make a number be given twice.
    // Listed again unless the folder's link count says nothing came or went: a folder
    // put into the store by hand while the daemon runs must push the numbering above it
    // and show as a problem.
    let (in_store, listed) = store::highest_in_store_since(&job.store, &job.name, job.listed);
    if in_store >= job.next {
        tracing::error!(
            model = job.name,
            "the store holds v{in_store}, which the catalog does not know; numbering continues above it"
        );
    }
    let mut next = job.next.max(in_store + 1);
    // Versions from here on are this job's own, staged, hashed just now.
    let first_new = next;
    let registered_at = crate::status::now_rfc3339();
    let mut new = Vec::new();
    let mut unchanged = Vec::new();
    // The inbox folder the files are opened beneath, checked to be the one pinned at
    // start; and the store must be the one pinned too.
    let inbox_dir = match &job.layout {
        Some(layout) => {
            if let Err(why) = layout.store() {
                return JobResult::Failed(why);
            }
            match layout.open_inbox() {
                Ok(d) => d,
                Err(why) => {
                    tracing::warn!(model = %job.name, "{why}");
                    return JobResult::Changed;
                }
            }
        }
        None => match inbox::open_dir(&job.inbox) {
            Ok(d) => d,
            Err(e) => return JobResult::Failed(format!("open {}: {e}", job.inbox.display())),
        },
    };
    let sidecar = match &job.sidecar {
        None => None,
        Some((entry, look)) => match read_sidecar(job, &inbox_dir, entry, look, &relative) {
            Ok(Some(s)) => Some(s),
            Ok(None) => return JobResult::Changed,
            Err(r) => return *r,
        },
    };
    let fresh = sidecar.as_ref().filter(|s| s.fresh);
    for (entry, look) in &job.artifacts {
        let Look::Files { folder, files } = look else {
            continue;
        };
        // What the entry is decides its model name (a file `rw.pt` is model `rw`, a
        // folder `rw.pt` is model `rw.pt`): re-read here, at registration time, from what
        // was looked at, so an entry that changed kind is never registered under the
        // name of its old kind. The settler regroups it.
        match crate::names::classify(std::ffi::OsStr::new(entry), *folder) {
            crate::names::Entry::Artifact { name } if name == job.name => {}
            _ => return JobResult::Changed,
        }
        let fingerprint = look.fingerprint().unwrap_or_default();
        // Re-check before and after copying: a file that changed in between is retried,
        // never half-registered (as Syncthing does).
        if job.changed_since(entry, &fingerprint) {
            return JobResult::Changed;
        }
        let rels: Vec<String> = files.iter().map(|f| f.rel.clone()).collect();
        // The owner of the first file, through the handle copied from: who dropped it.
        let owner = std::cell::Cell::new(None);
        // Each file is opened once, checked through its handle against what settled,
        // copied and hashed from that handle, and checked again through it afterwards.
        let mut open = |i: usize| -> Result<store::OpenSource> {
            let f = &files[i];
            match inbox::open_checked(&inbox_dir, &job.inbox, f, job.follow_symlinks) {
                Ok(o) => {
                    if i == 0 {
                        use std::os::unix::fs::MetadataExt;
                        owner.set(o.file.metadata().ok().map(|m| m.uid()));
                    }
                    Ok(store::OpenSource {
                        file: o.file,
                        shown: f.src.clone(),
                        mode: o.mode,
                    })
                }
                Err(inbox::OpenError::Changed(why)) => Err(Error::SourceChanged(why)),
                Err(inbox::OpenError::Io(e)) => Err(Error::io("open", &f.src, e)),
            }
        };
        let mut check = |i: usize, file: &std::fs::File| -> Result<()> {
            let f = &files[i];
            inbox::unchanged_through(file, &f.src, &f.stat).map_err(Error::SourceChanged)
        };
        let t0 = std::time::Instant::now();
        let staged = match store::stage_reusing(
            &job.store,
            &job.name,
            next,
            &rels,
            &mut open,
            &mut check,
            cancel,
            done,
            &job.stored,
        ) {
            Ok(s) => s,
            Err(Error::Cancelled) => return JobResult::Cancelled,
            Err(Error::SourceChanged(why)) => {
                tracing::info!(model = %job.name, "{why}; looking at it again");
                return JobResult::Changed;
            }
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => {
                return JobResult::Changed;
            }
            Err(e) => return JobResult::Failed(e.to_string()),
        };
        let content: Vec<(String, String)> = staged
            .files
            .iter()
            .map(|f| (f.rel.clone(), f.sha256.clone()))
            .collect();
        if job.changed_since(entry, &fingerprint) {
            let _ = store::discard(&staged.dir);
            return JobResult::Changed;
        }
        // A stored version's recorded hashes are what it held when stored; its bytes are
        // compared too (as for a hand-over), so one damaged in place is not "identical":
        // the entry then becomes a version of its own, and the damage a problem.
        let same = newest
            .iter()
            .chain(job.same_source.get(entry))
            .find(|k| {
                k.files == content
                    && (k.number >= first_new
                        || store::staged_equals_version(
                            &job.store,
                            &job.name,
                            k.number,
                            &staged.dir,
                            &content,
                            &job.stored.damaged(),
                        ))
            })
            .map(|k| k.number);
        if let Some(number) = same {
            let _ = store::discard(&staged.dir);
            unchanged.push((entry.clone(), fingerprint, number));
            continue;
        }
        let saved = match dedup(&job.store, &staged, &job.stored, &job.name, next) {
            Ok(saved) => saved,
            Err(e) => {
                let _ = store::discard(&staged.dir);
                return JobResult::Failed(e.to_string());
            }
        };
        let origin = super::facts::inbox_origin(
            &job.inbox.join(entry),
            *folder,
            sidecar.as_ref().and_then(|s| s.parsed.source.as_deref()),
            owner.get(),
            files.iter().map(|f| f.stat.mtime_ns).max(),
        );
        let facts = super::facts::gather(
            job.extract,
            &staged,
            *folder,
            origin,
            fresh.map(|s| (s.metrics(), &s.parsed.metadata)),
        );
        let manifest = store::Manifest {
            format: store::MANIFEST_FORMAT,
            name: job.name.clone(),
            version: next,
            kind: if *folder { Kind::Folder } else { Kind::File },
            registered_at: registered_at.clone(),
            source: relative(&job.inbox.join(entry)),
            files: staged.files.clone(),
            metrics: facts.metrics.clone(),
            metadata: fresh.map(|s| s.metadata()).unwrap_or_default(),
            metric_sources: facts.metric_sources.clone(),
            extracted: facts.extracted.clone(),
            provenance: facts.provenance.clone(),
        };
        // The manifest, then the whole version durable in one round of fsyncs.
        if let Err(e) = store::seal(&staged, &manifest) {
            let _ = store::discard(&staged.dir);
            return JobResult::Failed(e.to_string());
        }
        newest = Some(Known {
            number: next,
            files: content,
        });
        staged_out.push(staged);
        new.push((
            entry.clone(),
            next,
            if *folder { Kind::Folder } else { Kind::File },
            fingerprint,
            t0.elapsed().as_secs_f64(),
            saved.bytes,
            facts,
        ));
        next += 1;
    }
    let new = new
        .into_iter()
        .zip(staged_out.drain(..))
        .map(
            |((entry, number, kind, fingerprint, copy_secs, dedup_saved, facts), staged)| {
                NewVersion {
                    entry,
                    number,
                    registered_at: registered_at.clone(),
                    kind,
                    fingerprint,
                    staged,
                    copy_secs,
                    dedup_saved,
                    facts,
                }
            },
        )
        .collect();
    JobResult::Done {
        new,
        unchanged,
        in_catalog: Vec::new(),
        sidecar: sidecar.map(Box::new),
        store_ahead: (in_store >= job.next).then_some(in_store),
        listed,
    }
}

/// Reads at most `cap` bytes from `f`: `Ok(None)` when there is more.
fn read_capped(f: &std::fs::File, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    f.take(cap + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= cap).then_some(bytes))
}

fn read_sidecar(
    job: &Job,
    inbox_dir: &std::fs::File,
    entry: &str,
    look: &Look,
    relative: &dyn Fn(&Path) -> String,
) -> Result<Option<SidecarRead>, Box<JobResult>> {
    let Look::Files { files, .. } = look else {
        return Ok(None);
    };
    let Some(f) = files.first() else {
        return Ok(None);
    };
    let shown = f.src.display().to_string();
    let too_large = || {
        Box::new(JobResult::Blocked(
            shown.clone(),
            format!(
                "{}: larger than {MAX_SIDECAR_BYTES} bytes; a sidecar holds metrics",
                relative(&f.src)
            ),
        ))
    };
    if f.stat.size > MAX_SIDECAR_BYTES {
        return Err(too_large());
    }
    // Opened as artifacts are (no link followed out of the inbox, the handle checked
    // against what was looked at), then read through that one handle and never more
    // than the cap + 1 bytes: the file may grow (to a huge sparse file) once it is open.
    let file = match inbox::open_checked(inbox_dir, &job.inbox, f, job.follow_symlinks) {
        Ok(o) => o.file,
        Err(inbox::OpenError::Changed(_)) => return Ok(None),
        Err(inbox::OpenError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(inbox::OpenError::Io(e)) => {
            return Err(Box::new(JobResult::Failed(format!("open {shown}: {e}"))));
        }
    };
    let bytes = match read_capped(&file, MAX_SIDECAR_BYTES) {
        Ok(Some(b)) => b,
        Ok(None) => return Err(too_large()),
        Err(e) => return Err(Box::new(JobResult::Failed(format!("read {shown}: {e}")))),
    };
    let fingerprint = look.fingerprint().unwrap_or_default();
    if job.changed_since(entry, &fingerprint) {
        return Ok(None);
    }
    let parsed = sidecar::parse(&relative(&f.src), &bytes)
        .map_err(|e| Box::new(JobResult::Blocked(shown.clone(), e.to_string())))?;
    let sha256 = crate::fsutil::sha256_hex(&bytes);
    // Stale: the content already applied to the latest version, in a file nobody has
    // written since. Written again, even with the same content, it is meant for the
    // artifact that comes with it.
    let stale = job.latest_sidecar.as_deref() == Some(sha256.as_str())
        && job.sidecar_seen.as_ref() == Some(&fingerprint);
    let fresh = !stale;
    Ok(Some(SidecarRead {
        entry: entry.to_string(),
        fingerprint,
        sha256,
        parsed,
        fresh,
    }))
}

/// Links the staged files whose bytes another version already stores (inbox versions and
/// hand-overs alike) and logs and returns what that saved, counting what staging itself
/// linked.
pub(super) fn dedup(
    store_dir: &std::path::Path,
    staged: &store::Staged,
    stored: &store::Stored,
    name: &str,
    version: u32,
) -> crate::error::Result<store::Deduped> {
    let after = store::link_duplicates(store_dir, staged, stored)?;
    let saved = store::Deduped {
        files: staged.linked.files + after.files,
        bytes: staged.linked.bytes + after.bytes,
    };
    log_dedup(name, version, &saved, staged.files.len());
    Ok(saved)
}

/// Logs what dedup saved for `name` v`version` of `total` files (nothing when nothing
/// was linked): the log is where an operator sees dedup at work.
fn log_dedup(name: &str, version: u32, saved: &store::Deduped, total: usize) {
    if saved.files > 0 {
        tracing::info!(
            model = %name,
            version,
            files = saved.files,
            bytes_saved = saved.bytes,
            "{name} v{version}: {} of {total} file(s) already stored, hard-linked ({} saved)",
            saved.files,
            crate::status::human_bytes(saved.bytes)
        );
    }
}
