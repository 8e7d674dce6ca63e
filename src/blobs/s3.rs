//! The S3 backend (object_store): HEAD before sending, parts streamed from the file, the whole hashed before completing, then HEAD (and optionally a read-back).
//!
//! Why a blob can be trusted once [`S3Blobs::put_file`] returned:
//! - each request's body goes with its SHA-256 (`x-amz-checksum-sha256`, object_store's
//!   `Checksum::SHA256`, and the SigV4 payload hash); a server that honours it (Garage
//!   2.x, AWS S3, MinIO) refuses a body that arrived different, so no part is stored
//!   damaged;
//! - the whole file is hashed as its parts are read, and the multipart upload is
//!   completed only if that hash is the blob's: a file that is not what its key says is
//!   aborted, never becomes visible, and a small one is refused before anything is sent;
//! - HEAD after completing checks the size (a part lost or doubled shows there);
//! - with [`super::BlobOptions::read_back`], the blob is also read back in full and
//!   hashed, for a server that does not check checksums.
//!
//! A failed check deletes what was stored. No conditional write is used: the same key
//! always holds the same bytes, so two hosts uploading at once is harmless.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, Checksum};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions,
    PutPayload, RetryConfig,
};
use sha2::{Digest, Sha256};

use super::error::{BlobError, BlobResult};
use super::local::{Reader, TempDest, blocking, read_part};
use super::{BlobInfo, BlobOptions, PutJob, PutOutcome, Upload, Verification, sha256_of_key};
use crate::fsutil::hex;

/// Bytes handed at a time to the blocking task that writes or hashes a download.
const CHUNK: usize = 1 << 20;
/// S3's limit on the parts of one upload.
const MAX_PARTS: u64 = 10_000;

/// Blobs in an S3 bucket under a prefix.
#[derive(Debug)]
pub(super) struct S3Blobs {
    store: Arc<AmazonS3>,
    prefix: String,
    describe: String,
    part_size: u64,
    parts_in_flight: usize,
    read_back: bool,
}

impl S3Blobs {
    /// The client for `s3://bucket/prefix`: AWS_* variables, then `options` over them.
    pub fn open(
        setting: &str,
        bucket: &str,
        prefix: &str,
        options: &BlobOptions,
    ) -> BlobResult<Self> {
        // reqwest is built with rustls but no bundled provider (no aws-lc-rs build):
        // ring, which the HTTP API uses already, is the process's default. An error means
        // one is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = ClientOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.request_timeout)
            .with_read_timeout(options.stall_timeout);
        // The timeouts first, then the AWS_* variables (as from_env reads them: a client
        // setting there, e.g. a proxy, must not be wiped by the timeouts), then `options`.
        let mut b = AmazonS3Builder::new()
            .with_client_options(client)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: options.max_retries,
                retry_timeout: options.retry_timeout,
            });
        for (name, value) in std::env::vars() {
            if let Some(key) = name
                .starts_with("AWS_")
                .then(|| name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>().ok())
                .flatten()
            {
                b = b.with_config(key, value);
            }
        }
        b = b
            .with_bucket_name(bucket)
            .with_checksum_algorithm(Checksum::SHA256);
        if let Some(v) = &options.endpoint {
            b = b.with_endpoint(v);
        }
        if let Some(v) = &options.region {
            b = b.with_region(v);
        }
        if let Some(v) = &options.access_key_id {
            b = b.with_access_key_id(v);
        }
        if let Some(v) = &options.secret_access_key {
            b = b.with_secret_access_key(v);
        }
        let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
        // Plain HTTP only when the endpoint says so: a server on a private network.
        if endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
        {
            b = b.with_allow_http(true);
        }
        let region = b
            .get_config_value(&AmazonS3ConfigKey::Region)
            .unwrap_or_else(|| "us-east-1".into());
        let at = endpoint.unwrap_or_else(|| format!("AWS S3 {region}"));
        let describe = if prefix.is_empty() {
            format!("s3://{bucket} at {at}")
        } else {
            format!("s3://{bucket}/{prefix} at {at}")
        };
        let store = b.build().map_err(|e| BlobError::Config {
            given: setting.to_string(),
            reason: e.to_string(),
        })?;
        Ok(S3Blobs {
            store: Arc::new(store),
            prefix: prefix.to_string(),
            describe,
            part_size: options.part_size.max(5 << 20),
            parts_in_flight: options.parts_in_flight.max(1),
            read_back: options.read_back,
        })
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// The object key of a blob.
    pub fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    fn error(&self, step: &'static str, key: &str, e: object_store::Error) -> BlobError {
        match e {
            object_store::Error::NotFound { .. } => BlobError::NotFound {
                store: self.describe.clone(),
                key: key.to_string(),
            },
            e => BlobError::Store {
                store: self.describe.clone(),
                step,
                key: key.to_string(),
                source: Box::new(e),
            },
        }
    }

    /// The part size for a file of `size` bytes: the configured one, or more so that
    /// the file fits in S3's 10,000 parts (rounded up to a MiB).
    fn part_size_for(&self, size: u64) -> u64 {
        let needed = size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
        self.part_size.max(needed)
    }

    pub async fn size(&self, rel: &str) -> BlobResult<Option<u64>> {
        let key = self.key(rel);
        match self.store.head(&ObjectPath::from(key.as_str())).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("HEAD", &key, e)),
        }
    }

    pub async fn put_file(&self, job: &PutJob) -> BlobResult<PutOutcome> {
        let (src, sha256, size) = (&job.src, job.sha256.as_str(), job.size);
        let key = self.key(&job.rel);
        let location = ObjectPath::from(key.as_str());
        match self.size(&job.rel).await? {
            Some(s) if s == size && !job.replace => return Ok(PutOutcome::already_present(key)),
            Some(s) => tracing::warn!(
                "blob store {}: {key} holds {s} bytes, not {size}: uploading it again",
                self.describe
            ),
            None => {}
        }
        let reader = Reader::open(src, size, &self.describe, &key)?;
        let part_size = self.part_size_for(size);
        if size <= part_size {
            let (reader, bytes) = read_part(reader, size as usize).await?;
            self.check_read(reader, sha256, size, &key)?;
            self.store
                .put_opts(&location, PutPayload::from(bytes), PutOptions::default())
                .await
                .map_err(|e| self.error("PUT", &key, e))?;
        } else {
            let mut upload = self
                .store
                .put_multipart_opts(&location, PutMultipartOptions::default())
                .await
                .map_err(|e| self.error("start multipart upload", &key, e))?;
            let sent = self
                .send_parts(upload.as_mut(), reader, part_size, sha256, size, &key)
                .await;
            let completed = match sent {
                Ok(()) => upload
                    .complete()
                    .await
                    .map_err(|e| self.error("complete multipart upload", &key, e)),
                Err(e) => Err(e),
            };
            if let Err(e) = completed {
                // Best effort: a server that is gone cannot be told; its incomplete
                // upload holds no visible object either way.
                let _ = upload.abort().await;
                return Err(e);
            }
        }
        let verified = self.verify(&location, &key, sha256, size).await?;
        Ok(PutOutcome {
            key,
            upload: Upload::Uploaded,
            bytes_sent: size,
            verified,
        })
    }

    /// Reads the file part by part, each part sent as soon as it is read, at most
    /// `parts_in_flight` at once (each on its own task, so sending goes on while the next
    /// part is read). Fails, before the upload is completed, when the file read is not
    /// `size` bytes hashing to `sha256`.
    async fn send_parts(
        &self,
        upload: &mut dyn object_store::MultipartUpload,
        mut reader: Reader,
        part_size: u64,
        sha256: &str,
        size: u64,
        key: &str,
    ) -> BlobResult<()> {
        let mut in_flight = tokio::task::JoinSet::new();
        let part_failed = |e: Result<object_store::Result<()>, tokio::task::JoinError>| {
            let e = match e {
                Ok(r) => return r.map_err(|e| self.error("upload part", key, e)),
                Err(e) => object_store::Error::JoinError { source: e },
            };
            Err(self.error("upload part", key, e))
        };
        loop {
            let (r, part) = read_part(reader, part_size as usize).await?;
            reader = r;
            if part.is_empty() {
                break;
            }
            while in_flight.len() >= self.parts_in_flight {
                if let Some(done) = in_flight.join_next().await {
                    part_failed(done)?;
                }
            }
            in_flight.spawn(upload.put_part(PutPayload::from(part)));
        }
        while let Some(done) = in_flight.join_next().await {
            part_failed(done)?;
        }
        self.check_read(reader, sha256, size, key)
    }

    /// The file read was `size` bytes hashing to `sha256`, or the upload is refused.
    fn check_read(&self, reader: Reader, sha256: &str, size: u64, key: &str) -> BlobResult<()> {
        if reader.read() != size {
            return Err(BlobError::Size {
                store: self.describe.clone(),
                step: "read file",
                key: key.to_string(),
                expected: size,
                actual: reader.read(),
            });
        }
        let actual = reader.sha256();
        if actual != sha256 {
            return Err(BlobError::Mismatch {
                store: self.describe.clone(),
                step: "upload",
                key: key.to_string(),
                expected: sha256.to_string(),
                actual,
            });
        }
        Ok(())
    }

    /// After an upload: the size by HEAD, and the content read back when configured.
    /// A blob that fails is deleted.
    async fn verify(
        &self,
        location: &ObjectPath,
        key: &str,
        sha256: &str,
        size: u64,
    ) -> BlobResult<Verification> {
        let meta = self
            .store
            .head(location)
            .await
            .map_err(|e| self.error("HEAD after upload", key, e))?;
        let failed = if meta.size != size {
            BlobError::Size {
                store: self.describe.clone(),
                step: "HEAD after upload",
                key: key.to_string(),
                expected: size,
                actual: meta.size,
            }
        } else if !self.read_back {
            return Ok(Verification::ServerChecksum);
        } else {
            let actual = self.read_sha256(location, key).await?;
            if actual == sha256 {
                return Ok(Verification::ReadBack);
            }
            BlobError::Mismatch {
                store: self.describe.clone(),
                step: "read back",
                key: key.to_string(),
                expected: sha256.to_string(),
                actual,
            }
        };
        if let Err(e) = self.store.delete(location).await {
            tracing::warn!("blob store {}: deleting the bad {key}: {e}", self.describe);
        }
        Err(failed)
    }

    /// The SHA-256 of the stored object, read in full.
    async fn read_sha256(&self, location: &ObjectPath, key: &str) -> BlobResult<String> {
        let hasher = self
            .get_into(location, key, Sha256::new(), |h, bytes| {
                h.update(bytes);
                Ok(())
            })
            .await?;
        Ok(hex(&hasher.finalize()))
    }

    pub async fn fetch(&self, sha256: &str, rel: &str, dest: &Path) -> BlobResult<u64> {
        let key = self.key(rel);
        let location = ObjectPath::from(key.as_str());
        let out = TempDest::new(dest)?;
        let out = self
            .get_into(&location, &key, out, |out, bytes| out.write(bytes))
            .await?;
        let (sha256, describe) = (sha256.to_string(), self.describe.clone());
        blocking(move || out.finish(&sha256, &describe, &key)).await
    }

    /// GETs the object and hands its bytes, in chunks of about [`CHUNK`], to `f` on a
    /// blocking task (writing or hashing gigabytes must not hold an async worker).
    /// Returns the state `f` built; on any error that state is dropped (a temp file with
    /// it).
    async fn get_into<T: Send + 'static>(
        &self,
        location: &ObjectPath,
        key: &str,
        state: T,
        mut f: impl FnMut(&mut T, &[u8]) -> BlobResult<()> + Send + 'static,
    ) -> BlobResult<T> {
        let got = self
            .store
            .get(location)
            .await
            .map_err(|e| self.error("GET", key, e))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let worker = blocking(move || {
            let mut state = state;
            while let Some(chunk) = rx.blocking_recv() {
                f(&mut state, &chunk)?;
            }
            Ok(state)
        });
        let received = async move {
            let mut stream = got.into_stream();
            let mut buf = Vec::with_capacity(CHUNK);
            while let Some(bytes) = stream.next().await {
                buf.extend_from_slice(&bytes.map_err(|e| self.error("GET", key, e))?);
                // A send fails only when the worker stopped on an error: it is reported.
                if buf.len() >= CHUNK && tx.send(std::mem::take(&mut buf)).await.is_err() {
                    return Ok(());
                }
            }
            if !buf.is_empty() {
                let _ = tx.send(buf).await;
            }
            Ok(())
            // `tx` is dropped here: the worker sees the end.
        };
        let (received, state) = tokio::join!(received, worker);
        received?;
        state
    }

    pub async fn delete(&self, rel: &str) -> BlobResult<()> {
        let key = self.key(rel);
        match self.store.delete(&ObjectPath::from(key.as_str())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("DELETE", &key, e)),
        }
    }

    /// The bytes of object `rel` (a small one: the marker); `None` when there is none.
    pub async fn read_small(&self, rel: &str) -> BlobResult<Option<Vec<u8>>> {
        let key = self.key(rel);
        let location = ObjectPath::from(key.as_str());
        match self.store.get(&location).await {
            Ok(got) => got
                .bytes()
                .await
                .map(|b| Some(b.to_vec()))
                .map_err(|e| self.error("GET", &key, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("GET", &key, e)),
        }
    }

    /// Writes object `rel` (a small one: the marker) in one PUT.
    pub async fn write_small(&self, rel: &str, bytes: &[u8]) -> BlobResult<()> {
        let key = self.key(rel);
        self.store
            .put_opts(
                &ObjectPath::from(key.as_str()),
                PutPayload::from(bytes.to_vec()),
                PutOptions::default(),
            )
            .await
            .map(drop)
            .map_err(|e| self.error("PUT", &key, e))
    }

    pub async fn list(&self) -> BlobResult<Vec<BlobInfo>> {
        let top = self.key("sha256");
        let mut listing = self.store.list(Some(&ObjectPath::from(top.as_str())));
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.error("LIST", &top, e))?;
            let key = meta.location.to_string();
            if let Some(sha256) = sha256_of_key(&key) {
                out.push(BlobInfo {
                    key,
                    sha256,
                    size: meta.size,
                    last_modified: SystemTime::from(meta.last_modified),
                });
            }
        }
        Ok(out)
    }
}
