//! The team blob store: content-addressed files on S3 (object_store) or a shared folder, uploaded and verified before a catalog names them.
//!
//! A blob's key is `<prefix>/sha256/<first 2 hex>/<64 hex>`: the key says what the bytes
//! are, so two hosts uploading the same file write the same object with the same bytes,
//! and no conditional write is needed (Garage ignores `If-None-Match` anyway). The order a
//! registration follows is: [`BlobStore::put_file`] (upload, then verify), and only after
//! it returned, the catalog commit that names the blob. A blob uploaded and never
//! committed is an orphan, found by [`BlobStore::list`] with an age and deleted later.
//!
//! Backends, from the setting ([`BlobStore::open`]):
//! - `s3://bucket/prefix`: any S3 server. Endpoint, region and credentials the AWS way
//!   (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`),
//!   each overridable in [`BlobOptions`]. Every request's body carries its SHA-256
//!   (`x-amz-checksum-sha256`), which the server checks; large files go up in parts so
//!   no file is ever held in memory whole (see `s3.rs`).
//! - `/mnt/blobs` or `file:///mnt/blobs`: a folder shared by the hosts (NFS, CephFS...).
//!
//! By file: `s3` (the S3 backend), `path` (the folder backend), `local` (the local side:
//! a file read and hashed in parts, a fetched blob checked then renamed into place),
//! `error` (the errors).

use std::path::Path;
use std::time::{Duration, SystemTime};

mod error;
mod local;
mod path;
mod s3;

pub use error::{BlobError, BlobResult};

/// Settings of the S3 backend beyond the `s3://` setting. `None` leaves the value to the
/// AWS environment variables; the timeouts bound every request, so that an unreachable
/// server is an error within about `connect_timeout + retry_timeout`, never a hang.
#[derive(Debug, Clone)]
pub struct BlobOptions {
    /// The server's URL (`AWS_ENDPOINT_URL`); `http://` is allowed, for a private network.
    pub endpoint: Option<String>,
    /// The region (`AWS_REGION`); Garage's is its `s3_region`.
    pub region: Option<String>,
    /// The access key id (`AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// The secret key (`AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<String>,
    /// Time to open a connection.
    pub connect_timeout: Duration,
    /// Time one request may take in all (one part, one HEAD, a whole GET of a blob).
    pub request_timeout: Duration,
    /// Time a transfer may go without receiving a byte.
    pub stall_timeout: Duration,
    /// How long a failing request is retried (with backoff) before the error is returned.
    pub retry_timeout: Duration,
    /// How many times a failing request is retried at most.
    pub max_retries: usize,
    /// Size of an upload's parts; a file larger than this goes up in parts. Raised for
    /// files so large that they would need more than 10,000 parts (S3's limit).
    pub part_size: u64,
    /// Parts uploaded at once (each is held in memory while it is sent).
    pub parts_in_flight: usize,
    /// After an upload, read the blob back in full and hash it, rather than trusting the
    /// server's per-request checksum check (for a server that does not check them).
    pub read_back: bool,
}

impl Default for BlobOptions {
    fn default() -> Self {
        BlobOptions {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30 * 60),
            stall_timeout: Duration::from_secs(60),
            retry_timeout: Duration::from_secs(30),
            max_retries: 5,
            part_size: 16 << 20,
            parts_in_flight: 4,
            read_back: false,
        }
    }
}

/// Whether [`BlobStore::put_file`] sent the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// It was sent, then verified.
    Uploaded,
    /// A blob with its key and size was there already: nothing was sent.
    AlreadyPresent,
}

/// How a blob was found to hold the right bytes once stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// S3: the server checked each request's body against the SHA-256 sent with it
    /// (`x-amz-checksum-sha256`), the whole file hashed to the blob's SHA-256 before
    /// the upload was completed, and HEAD gave the right size.
    ServerChecksum,
    /// S3: the blob was read back in full and hashed ([`BlobOptions::read_back`]).
    ReadBack,
    /// Folder: hashed as written, fsynced, renamed into place.
    Written,
    /// Already present with the right size (not read again).
    SizeOnly,
}

/// What [`BlobStore::put_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    /// The blob's key.
    pub key: String,
    /// Sent, or found there already.
    pub upload: Upload,
    /// Bytes sent to the store (0 when already present).
    pub bytes_sent: u64,
    /// How the stored bytes were checked.
    pub verified: Verification,
}

impl PutOutcome {
    /// A blob found there already: nothing sent, its size checked.
    fn already_present(key: String) -> Self {
        PutOutcome {
            key,
            upload: Upload::AlreadyPresent,
            bytes_sent: 0,
            verified: Verification::SizeOnly,
        }
    }
}

/// One [`BlobStore::put_file`], as the backends get it.
#[derive(Debug, Clone)]
struct PutJob {
    /// The file to send.
    src: std::path::PathBuf,
    /// The SHA-256 its bytes must have.
    sha256: String,
    /// Its size.
    size: u64,
    /// Its key after the prefix ([`rel_key`]).
    rel: String,
    /// Send it even when a blob with its key and size is there (a repair of one damaged
    /// in place: same size, other bytes).
    replace: bool,
}

/// A blob found by [`BlobStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its key.
    pub key: String,
    /// Its SHA-256 (from the key).
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub last_modified: SystemTime,
}

/// A blob store: S3 or a shared folder.
#[derive(Debug)]
pub struct BlobStore {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    S3(s3::S3Blobs),
    Path(path::PathBlobs),
}

impl BlobStore {
    /// Opens the store a setting names: `s3://bucket[/prefix]`, `file:///folder` or an
    /// absolute folder path. Nothing is contacted yet (an unreachable server shows at the
    /// first operation); the folder must exist.
    pub fn open(setting: &str, options: &BlobOptions) -> BlobResult<Self> {
        let bad = |reason: &str| BlobError::Config {
            given: setting.to_string(),
            reason: reason.to_string(),
        };
        let backend = if let Some(rest) = setting.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket: write s3://bucket/prefix"));
            }
            let prefix = prefix.trim_matches('/');
            Backend::S3(s3::S3Blobs::open(setting, bucket, prefix, options)?)
        } else {
            let folder = setting.strip_prefix("file://").unwrap_or(setting);
            if !folder.starts_with('/') {
                return Err(bad(
                    "expected s3://bucket/prefix, file:///folder or an absolute folder path",
                ));
            }
            Backend::Path(path::PathBlobs::open(setting, Path::new(folder), options)?)
        };
        Ok(BlobStore { backend })
    }

    /// The store in messages: `s3://bucket/prefix at ENDPOINT` or `folder /mnt/blobs`.
    pub fn describe(&self) -> &str {
        match &self.backend {
            Backend::S3(s) => s.describe(),
            Backend::Path(p) => p.describe(),
        }
    }

    /// A folder store: that this host may write in it (a temp file made and deleted),
    /// so that a daemon refuses at start a share mounted read-only or owned by another
    /// user, rather than at its first registration. S3: nothing checked (no request is
    /// made before the first use).
    pub fn check_writable(&self) -> BlobResult<()> {
        match &self.backend {
            Backend::S3(_) => Ok(()),
            Backend::Path(p) => p.check_writable(),
        }
    }

    /// The key of the blob with this SHA-256 (`<prefix>/sha256/ab/ab12...`; for a folder,
    /// its path).
    pub fn key(&self, sha256: &str) -> BlobResult<String> {
        let rel = rel_key(sha256)?;
        Ok(match &self.backend {
            Backend::S3(s) => s.key(&rel),
            Backend::Path(p) => p.file(&rel).display().to_string(),
        })
    }

    /// Stores the file at `path`, whose bytes the caller hashed to `sha256` (`size`
    /// bytes). A blob already present with that size is not sent again. Otherwise the
    /// file is sent as it is read and hashed; bytes that do not hash to `sha256` are
    /// refused, and nothing is left in the store. Returns once the stored blob is
    /// verified ([`Verification`]): only then may a catalog name it.
    pub async fn put_file(&self, path: &Path, sha256: &str, size: u64) -> BlobResult<PutOutcome> {
        self.put(path, sha256, size, false).await
    }

    /// [`Self::put_file`] without the presence check: the file is sent, verified as every
    /// upload is, and replaces whatever the key holds. The repair of a blob damaged in
    /// place (same size, other bytes), which `put_file` would take as present
    /// (`verify --catalog --blobs --repair`).
    pub async fn replace_file(
        &self,
        path: &Path,
        sha256: &str,
        size: u64,
    ) -> BlobResult<PutOutcome> {
        self.put(path, sha256, size, true).await
    }

    async fn put(
        &self,
        path: &Path,
        sha256: &str,
        size: u64,
        replace: bool,
    ) -> BlobResult<PutOutcome> {
        let job = PutJob {
            rel: rel_key(sha256)?,
            src: path.to_path_buf(),
            sha256: sha256.to_string(),
            size,
            replace,
        };
        match &self.backend {
            Backend::S3(s) => s.put_file(&job).await,
            Backend::Path(p) => p.put_file(job).await,
        }
    }

    /// Fetches the blob into `dest`: written to a temp file in `dest`'s folder, its
    /// SHA-256 checked, made read-only (0444), fsynced, then renamed into place. A blob whose bytes are not
    /// `sha256` is an error naming the key and both hashes, and nothing is left at
    /// `dest`. Returns its size.
    pub async fn fetch(&self, sha256: &str, dest: &Path) -> BlobResult<u64> {
        let rel = rel_key(sha256)?;
        match &self.backend {
            Backend::S3(s) => s.fetch(sha256, &rel, dest).await,
            Backend::Path(p) => p.fetch(sha256, &rel, dest).await,
        }
    }

    /// The size of the blob, if the store has it.
    pub async fn exists(&self, sha256: &str) -> BlobResult<Option<u64>> {
        let rel = rel_key(sha256)?;
        match &self.backend {
            Backend::S3(s) => s.size(&rel).await,
            Backend::Path(p) => p.size(&rel),
        }
    }

    /// Deletes the blob; one that is not there is not an error.
    pub async fn delete(&self, sha256: &str) -> BlobResult<()> {
        let rel = rel_key(sha256)?;
        match &self.backend {
            Backend::S3(s) => s.delete(&rel).await,
            Backend::Path(p) => p.delete(&rel),
        }
    }

    /// Every blob last written at least `older_than` ago (for orphan collection: those
    /// no catalog names are deleted after a grace period). Keys under the prefix that are
    /// not blob keys are not listed.
    pub async fn list(&self, older_than: Duration) -> BlobResult<Vec<BlobInfo>> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut all = match &self.backend {
            Backend::S3(s) => s.list().await?,
            Backend::Path(p) => p.list().await?,
        };
        all.retain(|b| b.last_modified <= cutoff);
        Ok(all)
    }

    /// Where the store's marker is: [`MARKER`] beside `sha256/` (`<prefix>/modelreg-catalog.json`
    /// or `<folder>/modelreg-catalog.json`).
    pub fn marker_key(&self) -> String {
        match &self.backend {
            Backend::S3(s) => s.key(MARKER),
            Backend::Path(p) => p.file(MARKER).display().to_string(),
        }
    }

    /// The marker's bytes; `None` when the store has none (docs/team.md, "A blob store
    /// belongs to one catalog").
    pub async fn read_marker(&self) -> BlobResult<Option<Vec<u8>>> {
        match &self.backend {
            Backend::S3(s) => s.read_small(MARKER).await,
            Backend::Path(p) => p.read_small(MARKER),
        }
    }

    /// Writes the marker when the store has none, atomically (a folder: a temp file
    /// fsynced, then linked into place only if no marker is there; S3: one PUT). Returns
    /// `false` when a folder already had one (another host claimed it first: read it
    /// again).
    pub async fn write_marker(&self, bytes: &[u8]) -> BlobResult<bool> {
        match &self.backend {
            Backend::S3(s) => s.write_small(MARKER, bytes).await.map(|()| true),
            Backend::Path(p) => p.write_new(MARKER, bytes),
        }
    }

    /// Whether the store holds any blob (of any age).
    pub async fn has_blobs(&self) -> BlobResult<bool> {
        Ok(!self.list(Duration::ZERO).await?.is_empty())
    }

    /// Deletes what uploads cut short left behind, last written at least `older_than`
    /// ago, and returns each one's name and size. A folder: the hidden temp files of
    /// uploads whose host died mid-write (`sha256/ab/.ab12....put-XXXX`). S3: nothing;
    /// an incomplete multipart upload is invisible to LIST and object_store cannot list
    /// them, so a bucket lifecycle rule (`AbortIncompleteMultipartUpload`) or the
    /// server's own cleanup removes them (docs/team.md, "Orphan blobs").
    pub async fn collect_abandoned(&self, older_than: Duration) -> BlobResult<Vec<(String, u64)>> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match &self.backend {
            Backend::S3(_) => Ok(Vec::new()),
            Backend::Path(p) => p.collect_abandoned(cutoff).await,
        }
    }
}

/// The name of the marker that says which catalog the store belongs to, beside
/// `sha256/`. Not a blob key, so never listed nor collected.
pub const MARKER: &str = "modelreg-catalog.json";

/// `sha256/ab/ab12...`: the part of a key after the prefix. Refuses anything but 64
/// lower-case hex digits, so that no argument can name another key.
fn rel_key(sha256: &str) -> BlobResult<String> {
    if is_sha256(sha256) {
        Ok(format!("sha256/{}/{sha256}", &sha256[..2]))
    } else {
        Err(BlobError::BadDigest {
            given: sha256.to_string(),
        })
    }
}

/// True for 64 lower-case hex digits.
fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The SHA-256 a blob key names: the last two parts must be `<first 2 hex>/<64 hex>`
/// under `sha256/`; anything else is not a blob.
fn sha256_of_key(key: &str) -> Option<String> {
    let mut parts = key.rsplit('/');
    let (hash, fan, algo) = (parts.next()?, parts.next()?, parts.next()?);
    (algo == "sha256" && is_sha256(hash) && fan == &hash[..2]).then(|| hash.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn keys_fan_out_by_the_first_two_hex_digits() {
        assert_eq!(rel_key(SHA).unwrap(), format!("sha256/ba/{SHA}"));
        assert_eq!(
            sha256_of_key(&format!("p/q/sha256/ba/{SHA}")),
            Some(SHA.into())
        );
        assert_eq!(sha256_of_key(&format!("sha256/bb/{SHA}")), None);
        assert_eq!(sha256_of_key(&format!("md5/ba/{SHA}")), None);
    }

    #[test]
    fn a_digest_that_could_name_another_key_is_refused() {
        for bad in [
            "",
            "../x",
            &SHA.to_uppercase(),
            &SHA[..63],
            &format!("{SHA}/.."),
        ] {
            assert!(
                matches!(rel_key(bad), Err(BlobError::BadDigest { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn settings_that_name_no_store_are_refused_with_the_reason() {
        let o = BlobOptions::default();
        let e = BlobStore::open("s3:///prefix", &o).unwrap_err().to_string();
        assert!(e.contains("no bucket"), "{e}");
        let e = BlobStore::open("blobs", &o).unwrap_err().to_string();
        assert!(e.contains("absolute folder path"), "{e}");
    }
}
