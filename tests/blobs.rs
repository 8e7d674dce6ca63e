//! The team blob store against a real Garage S3 server and a shared folder: round trips
//! in parts, refused digests, damaged blobs, an unreachable server, listing and deleting.

#[path = "common/garage.rs"]
mod garage;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use garage::{BUCKET, Garage, REGION};
use modelreg::blobs::{BlobError, BlobOptions, BlobStore, Upload, Verification};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const MIB: usize = 1 << 20;

/// Options that reach the test server: its endpoint and key, and short retries so an
/// unreachable server is an error soon.
fn options(g: &Garage) -> BlobOptions {
    BlobOptions {
        endpoint: Some(g.endpoint.clone()),
        region: Some(REGION.into()),
        access_key_id: Some(g.key_id.clone()),
        secret_access_key: Some(g.secret.clone()),
        connect_timeout: Duration::from_secs(2),
        retry_timeout: Duration::from_secs(3),
        max_retries: 3,
        ..BlobOptions::default()
    }
}

fn s3_store(g: &Garage, prefix: &str) -> BlobStore {
    BlobStore::open(&format!("s3://{BUCKET}/{prefix}"), &options(g)).unwrap()
}

/// A plain S3 client on the test bucket, to look at and damage what the store wrote.
fn raw(g: &Garage) -> AmazonS3 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    AmazonS3Builder::new()
        .with_endpoint(&g.endpoint)
        .with_allow_http(true)
        .with_region(REGION)
        .with_bucket_name(BUCKET)
        .with_access_key_id(&g.key_id)
        .with_secret_access_key(&g.secret)
        .build()
        .unwrap()
}

async fn raw_keys(s3: &AmazonS3, prefix: &str) -> Vec<String> {
    use futures_util::TryStreamExt;
    s3.list(Some(&ObjectPath::from(prefix)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

/// `len` pseudo-random bytes (xorshift, 8 at a time: 64 MiB in well under a second).
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a file of `len` bytes; returns its path and SHA-256.
fn file(dir: &Path, name: &str, seed: u64, len: usize) -> (PathBuf, String) {
    let bytes = data(seed, len);
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, modelreg::fsutil::sha256_hex(&bytes))
}

fn mb_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

/// Files left in a folder (a failed fetch must leave no temp file behind).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Put and fetch while the server could not answer: errors of the store naming its
/// endpoint, within a bound (not a performance bound: a hang is the failure), and no file
/// left where the fetch was to write.
fn failed_naming(g: &Garage, errors: [BlobError; 2], took: Duration, dest: &Path) {
    for e in errors {
        let text = e.to_string();
        assert!(matches!(e, BlobError::Store { .. }), "{text}");
        assert!(text.contains(&g.endpoint), "{text}");
    }
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert!(!dest.exists());
}

/// Put, fetch, put again: shared by both backends. Returns the put and fetch times.
async fn round_trip(store: &BlobStore, work: &Path, len: usize) -> (Duration, Duration) {
    let (src, sha) = file(work, "model.safetensors", 1, len);
    let t0 = Instant::now();
    let put = store.put_file(&src, &sha, len as u64).await.unwrap();
    let put_took = t0.elapsed();
    assert_eq!(put.upload, Upload::Uploaded);
    assert_eq!(put.bytes_sent, len as u64);
    assert_eq!(put.key, store.key(&sha).unwrap());
    assert!(
        put.key.ends_with(&format!("sha256/{}/{sha}", &sha[..2])),
        "{}",
        put.key
    );
    assert_eq!(store.exists(&sha).await.unwrap(), Some(len as u64));

    let dest = work.join("fetched").join("model.safetensors");
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let t0 = Instant::now();
    assert_eq!(store.fetch(&sha, &dest).await.unwrap(), len as u64);
    let fetch_took = t0.elapsed();
    assert_eq!(
        modelreg::fsutil::sha256_hex(&std::fs::read(&dest).unwrap()),
        sha
    );
    assert_eq!(names(dest.parent().unwrap()), ["model.safetensors"]);

    let again = store.put_file(&src, &sha, len as u64).await.unwrap();
    assert_eq!(again.upload, Upload::AlreadyPresent);
    assert_eq!(again.bytes_sent, 0);
    (put_took, fetch_took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_round_trips_in_parts_and_is_not_sent_twice() {
    let g = Garage::start();
    let work = tempfile::tempdir().unwrap();
    let len = 64 * MIB;
    let store = s3_store(&g, "team/blobs");
    let (put, fetch) = round_trip(&store, work.path(), len).await;

    // Sent in parts: a multipart object's ETag ends in -<parts> (16 MiB parts here).
    let sha = modelreg::fsutil::sha256_hex(&data(1, len));
    let meta = raw(&g)
        .head(&ObjectPath::from(store.key(&sha).unwrap().as_str()))
        .await
        .unwrap();
    let etag = meta.e_tag.unwrap_or_default();
    assert!(etag.trim_matches('"').ends_with("-4"), "{etag}");

    // Against the same file copied locally, and copied then fsynced as the store's own
    // writes are (no timed assertion: printed for the report).
    let cp = |to: &str, sync: bool| {
        let t0 = Instant::now();
        let dst = work.path().join(to);
        let ok = std::process::Command::new("cp")
            .arg(work.path().join("model.safetensors"))
            .arg(&dst)
            .status()
            .unwrap()
            .success()
            && (!sync
                || std::process::Command::new("sync")
                    .arg(&dst)
                    .status()
                    .unwrap()
                    .success());
        assert!(ok);
        t0.elapsed()
    };
    let (plain, synced) = (cp("copy", false), cp("synced", true));
    println!(
        "64 MiB on Garage (loopback): upload {:.0} MB/s ({put:?}), fetch {:.0} MB/s ({fetch:?}); \
         cp {:.0} MB/s ({plain:?}), cp + sync {:.0} MB/s ({synced:?})",
        mb_per_s(len, put),
        mb_per_s(len, fetch),
        mb_per_s(len, plain),
        mb_per_s(len, synced)
    );

    let folder = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let store = BlobStore::open(
        &format!("file://{}", folder.path().display()),
        &BlobOptions::default(),
    )
    .unwrap();
    let (put, fetch) = round_trip(&store, work.path(), len).await;
    println!(
        "64 MiB in a folder: put {:.0} MB/s ({put:?}), fetch {:.0} MB/s ({fetch:?})",
        mb_per_s(len, put),
        mb_per_s(len, fetch)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sha256_is_refused_and_nothing_is_left_in_the_store() {
    let g = Garage::start();
    let work = tempfile::tempdir().unwrap();
    let folder = tempfile::tempdir().unwrap();
    let stores = [
        s3_store(&g, "wrong"),
        BlobStore::open(folder.path().to_str().unwrap(), &BlobOptions::default()).unwrap(),
    ];
    // One file sent in one PUT, one in parts (the parts are sent before the whole is
    // hashed: the upload is aborted, never completed).
    for (i, len) in [MIB, 40 * MIB].into_iter().enumerate() {
        let (src, right) = file(work.path(), &format!("f{i}"), 7 + i as u64, len);
        let wrong = modelreg::fsutil::sha256_hex(b"something else");
        for store in &stores {
            let e = store.put_file(&src, &wrong, len as u64).await.unwrap_err();
            match &e {
                BlobError::Mismatch {
                    expected, actual, ..
                } => assert_eq!((expected, actual), (&wrong, &right), "{e}"),
                other => panic!("{other}"),
            }
            let text = e.to_string();
            assert!(
                text.contains(store.describe()) && text.contains(&wrong),
                "{text}"
            );
            assert_eq!(store.exists(&wrong).await.unwrap(), None);
            assert_eq!(store.exists(&right).await.unwrap(), None);
            assert!(store.list(Duration::ZERO).await.unwrap().is_empty());
        }
    }
    assert_eq!(raw_keys(&raw(&g), "").await, Vec::<String>::new());
    // Not even a temp file in the folder.
    let mut left = Vec::new();
    let mut stack = vec![folder.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p)
            } else {
                left.push(p)
            }
        }
    }
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_damaged_in_the_store_is_refused_by_fetch_and_nothing_is_left_at_dest() {
    let g = Garage::start();
    let work = tempfile::tempdir().unwrap();
    let (src, sha) = file(work.path(), "m.bin", 3, 3 * MIB);
    let other = data(4, 3 * MIB);
    let other_sha = modelreg::fsutil::sha256_hex(&other);

    let s3 = s3_store(&g, "damaged");
    s3.put_file(&src, &sha, 3 * MIB as u64).await.unwrap();
    let key = s3.key(&sha).unwrap();
    raw(&g)
        .put(
            &ObjectPath::from(key.as_str()),
            PutPayload::from(other.clone()),
        )
        .await
        .unwrap();

    let folder = tempfile::tempdir().unwrap();
    let dir = BlobStore::open(folder.path().to_str().unwrap(), &BlobOptions::default()).unwrap();
    dir.put_file(&src, &sha, 3 * MIB as u64).await.unwrap();
    // The blob is read-only: replaced, as someone with write access to the share could.
    std::fs::remove_file(dir.key(&sha).unwrap()).unwrap();
    std::fs::write(dir.key(&sha).unwrap(), &other).unwrap();

    for store in [&s3, &dir] {
        let out = work.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let dest = out.join("m.bin");
        let e = store.fetch(&sha, &dest).await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, BlobError::Mismatch { .. }), "{text}");
        for part in [store.key(&sha).unwrap(), sha.clone(), other_sha.clone()] {
            assert!(text.contains(&part), "{part} not in: {text}");
        }
        assert!(names(&out).is_empty(), "{:?}", names(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_an_error_naming_it_soon_and_work_resumes_after_restart() {
    let mut g = Garage::start();
    let work = tempfile::tempdir().unwrap();
    let store = s3_store(&g, "outage");
    let (a, sha_a) = file(work.path(), "a", 5, 2 * MIB);
    let (b, sha_b) = file(work.path(), "b", 6, 20 * MIB);
    store.put_file(&a, &sha_a, 2 * MIB as u64).await.unwrap();

    g.stop();
    let t0 = Instant::now();
    let put = store
        .put_file(&b, &sha_b, 20 * MIB as u64)
        .await
        .unwrap_err();
    let fetch = store
        .fetch(&sha_a, &work.path().join("a2"))
        .await
        .unwrap_err();
    let took = t0.elapsed();
    println!("S3 stopped: put and fetch failed in {took:?}: {put} | {fetch}");
    failed_naming(&g, [put, fetch], took, &work.path().join("a2"));

    g.restart();
    let put = store.put_file(&b, &sha_b, 20 * MIB as u64).await.unwrap();
    assert_eq!(put.upload, Upload::Uploaded);
    assert_eq!(put.verified, Verification::ServerChecksum);
    store.fetch(&sha_a, &work.path().join("a2")).await.unwrap();
    assert_eq!(
        std::fs::read(work.path().join("a2")).unwrap(),
        std::fs::read(&a).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_is_an_error_naming_it_within_the_timeouts_and_work_resumes() {
    let g = Garage::start();
    let work = tempfile::tempdir().unwrap();
    let store = BlobStore::open(
        &format!("s3://{BUCKET}/hung"),
        &BlobOptions {
            request_timeout: Duration::from_secs(4),
            stall_timeout: Duration::from_secs(2),
            ..options(&g)
        },
    )
    .unwrap();
    let (a, sha_a) = file(work.path(), "a", 12, 2 * MIB);
    store.put_file(&a, &sha_a, 2 * MIB as u64).await.unwrap();

    // Connections are accepted (the kernel's backlog), nothing is answered.
    g.freeze(true);
    let t0 = Instant::now();
    let put = store.put_file(&a, &sha_a, 2 * MIB as u64).await;
    let fetch = store.fetch(&sha_a, &work.path().join("a2")).await;
    let took = t0.elapsed();
    g.freeze(false);
    println!("S3 hung: put and fetch failed in {took:?}");
    failed_naming(
        &g,
        [put.unwrap_err(), fetch.unwrap_err()],
        took,
        &work.path().join("a2"),
    );

    store.fetch(&sha_a, &work.path().join("a2")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_sees_blobs_older_than_asked_and_delete_removes_them() {
    let g = Garage::start();
    let work = tempfile::tempdir().unwrap();
    let folder = tempfile::tempdir().unwrap();
    // A key under the prefix that is no blob is not listed (nor deleted later as one).
    raw(&g)
        .put(
            &ObjectPath::from("gc/sha256/zz/notes.txt"),
            PutPayload::from_static(b"x"),
        )
        .await
        .unwrap();
    let stores = [
        s3_store(&g, "gc"),
        BlobStore::open(folder.path().to_str().unwrap(), &BlobOptions::default()).unwrap(),
    ];
    let (src, sha) = file(work.path(), "m", 9, 1000);
    for store in &stores {
        store.put_file(&src, &sha, 1000).await.unwrap();
        let listed = store.list(Duration::ZERO).await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!((&listed[0].sha256, listed[0].size), (&sha, 1000));
        assert_eq!(listed[0].key, store.key(&sha).unwrap());
        // Just uploaded: not older than an hour, so not an orphan candidate yet.
        assert!(
            store
                .list(Duration::from_secs(3600))
                .await
                .unwrap()
                .is_empty()
        );

        store.delete(&sha).await.unwrap();
        assert_eq!(store.exists(&sha).await.unwrap(), None);
        assert!(store.list(Duration::ZERO).await.unwrap().is_empty());
        // Deleting what is not there is not an error.
        store.delete(&sha).await.unwrap();
    }
    assert_eq!(raw_keys(&raw(&g), "gc").await, ["gc/sha256/zz/notes.txt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_back_verification_reads_the_whole_blob() {
    let g = Garage::start();
    let work = tempfile::tempdir().unwrap();
    let store = BlobStore::open(
        &format!("s3://{BUCKET}/rb"),
        &BlobOptions {
            read_back: true,
            ..options(&g)
        },
    )
    .unwrap();
    let (src, sha) = file(work.path(), "m", 11, 20 * MIB);
    let put = store.put_file(&src, &sha, 20 * MIB as u64).await.unwrap();
    assert_eq!(put.verified, Verification::ReadBack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_variables_name_the_endpoint_region_and_credentials() {
    let g = Garage::start();
    // The variables are the process's: set them for a child run of this test binary (so
    // no other test here sees them), which runs the ignored test below with them alone.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "configured_by_aws_variables_only",
            "--include-ignored",
        ])
        .args(["--nocapture", "--test-threads", "1"])
        .env("AWS_ENDPOINT_URL", &g.endpoint)
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", &g.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &g.secret)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(raw_keys(&raw(&g), "env").await.len(), 1);
}

/// Run by the test above with the AWS_* variables set: nothing else names the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the_aws_variables_name_the_endpoint_region_and_credentials"]
async fn configured_by_aws_variables_only() {
    let store = BlobStore::open(&format!("s3://{BUCKET}/env"), &BlobOptions::default()).unwrap();
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    assert!(store.describe().contains(&endpoint), "{}", store.describe());
    let work = tempfile::tempdir().unwrap();
    let (src, sha) = file(work.path(), "m", 13, 1000);
    let put = store.put_file(&src, &sha, 1000).await.unwrap();
    assert_eq!(put.upload, Upload::Uploaded);
    store.fetch(&sha, &work.path().join("back")).await.unwrap();
}
