//! Tests of dedup: links made before and after copying, and what is never linked.
use super::*;
use crate::store::{STAGING, publish, stage_sharing};

/// Writes `files` (path in the version, bytes, mode) as sources and stages them as
/// version `n` of model `m`, sharing `stored`; `done` counts the bytes read.
fn stage_files(
    store: &Path,
    n: u32,
    files: &[(&str, &[u8], u32)],
    stored: &Stored,
    done: &AtomicU64,
) -> Result<Staged> {
    use std::os::unix::fs::PermissionsExt;
    let src = store.parent().unwrap().join(format!("src{n}"));
    fs::create_dir_all(&src).unwrap();
    let list: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(rel, bytes, mode)| {
            let p = src.join(rel.replace('/', "_"));
            fs::write(&p, bytes).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
            (p, rel.to_string())
        })
        .collect();
    let no = AtomicBool::new(false);
    stage_sharing(store, "m", n, &list, &no, done, stored)
}

/// Stages `files` as version `n` with nothing shared while staging.
fn copied(store: &Path, n: u32, files: &[(&str, &[u8], u32)]) -> Staged {
    let done = AtomicU64::new(0);
    stage_files(store, n, files, &Stored::default(), &done).unwrap()
}

/// Publishes `files` as v1 of model `m` in a new store; returns the store (in the
/// kept temporary folder) and v1's files as the catalog would describe them.
fn published_v1(tmp: &tempfile::TempDir, files: &[(&str, &[u8], u32)]) -> (PathBuf, Stored) {
    let store = tmp.path().join("models");
    let v1 = copied(&store, 1, files);
    let mut stored = Stored::default();
    for f in &v1.files {
        stored.add(&f.sha256, store.join("m/v1").join(&f.rel), f.size);
        stored.add_latest(&f.rel, &f.sha256);
    }
    publish(&v1).unwrap();
    (store, stored)
}

/// A store with `old` published as v1, and `new` staged as v2 sharing v1's files:
/// the kept temporary folder, the store, v2 and the bytes counted while staging it.
fn v2_after(
    old: &[(&str, &[u8], u32)],
    new: &[(&str, &[u8], u32)],
) -> (tempfile::TempDir, PathBuf, Staged, u64) {
    let tmp = tempfile::tempdir().unwrap();
    let (store, stored) = published_v1(&tmp, old);
    let done = AtomicU64::new(0);
    let v2 = stage_files(&store, 2, new, &stored, &done).unwrap();
    (tmp, store, v2, done.load(Ordering::Relaxed))
}

fn ino(p: &Path) -> u64 {
    fs::metadata(p).unwrap().ino()
}

/// `len` bytes, different for each `seed`.
fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
        .collect()
}

#[test]
fn an_unchanged_file_becomes_a_link_to_the_stored_one_and_a_changed_one_stays_a_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, stored) =
        published_v1(&tmp, &[("a.bin", b"same", 0o644), ("b.bin", b"old", 0o644)]);
    let v2 = copied(
        &store,
        2,
        &[("a.bin", b"same", 0o644), ("b.bin", b"new", 0o644)],
    );
    let saved = link_duplicates(&store, &v2, &stored).unwrap();
    assert_eq!(saved, Deduped { files: 1, bytes: 4 });
    assert_eq!(ino(&v2.dir.join("a.bin")), ino(&store.join("m/v1/a.bin")));
    assert_ne!(ino(&v2.dir.join("b.bin")), ino(&store.join("m/v1/b.bin")));
    assert_eq!(fs::read(v2.dir.join("a.bin")).unwrap(), b"same");
    // No temporary is left beside it.
    assert_eq!(fs::read_dir(&v2.dir).unwrap().count(), 2);
}

#[test]
fn a_stored_file_with_another_mode_is_not_shared() {
    // Readable by all this time: linking would keep it private (or the reverse).
    let (_tmp, store, v2, _) = v2_after(&[("a.bin", b"same", 0o600)], &[("a.bin", b"same", 0o644)]);
    assert_eq!(v2.linked, Deduped::default());
    let mut stored = Stored::default();
    stored.add(&v2.files[0].sha256, store.join("m/v1/a.bin"), 4);
    let saved = link_duplicates(&store, &v2, &stored).unwrap();
    assert_eq!(saved, Deduped::default());
    assert_ne!(ino(&v2.dir.join("a.bin")), ino(&store.join("m/v1/a.bin")));
}

#[test]
fn equal_files_in_one_version_share_one_inode() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("models");
    let v1 = copied(
        &store,
        1,
        &[("x/a.bin", b"twin", 0o644), ("y/b.bin", b"twin", 0o644)],
    );
    let saved = link_duplicates(&store, &v1, &Stored::default()).unwrap();
    assert_eq!(saved.files, 1);
    assert_eq!(ino(&v1.dir.join("x/a.bin")), ino(&v1.dir.join("y/b.bin")));
}

#[test]
fn a_file_found_stored_before_copying_is_read_and_linked_and_a_changed_one_copied() {
    let (same, old, new) = (data(3, 300_000), data(5, 300_000), data(7, 300_000));
    let (_tmp, store, v2, done) = v2_after(
        &[("w/a.bin", &same, 0o644), ("w/b.bin", &old, 0o644)],
        // b.bin: same size, other bytes.
        &[("w/a.bin", &same, 0o644), ("w/b.bin", &new, 0o644)],
    );
    let (files, bytes) = (1, 300_000);
    assert_eq!(v2.linked, Deduped { files, bytes });
    let v1 = store.join("m/v1");
    assert_eq!(ino(&v2.dir.join("w/a.bin")), ino(&v1.join("w/a.bin")));
    assert_ne!(ino(&v2.dir.join("w/b.bin")), ino(&v1.join("w/b.bin")));
    assert_eq!(fs::read(v2.dir.join("w/b.bin")).unwrap(), new);
    assert_eq!(v2.files[0].sha256, crate::fsutil::sha256_hex(&same));
    // Every byte counted once, read or copied: progress ends at the total.
    assert_eq!(done, 600_000);
}

#[test]
fn a_file_that_differs_only_between_the_samples_is_copied_not_linked() {
    let old = data(3, 400_000);
    let mut new = old.clone();
    // Between the start and middle samples: only the full hash sees it.
    new[100_000] ^= 1;
    let (_tmp, store, v2, done) = v2_after(&[("a.bin", &old, 0o644)], &[("a.bin", &new, 0o644)]);
    assert_eq!(v2.linked, Deduped::default());
    assert_ne!(ino(&v2.dir.join("a.bin")), ino(&store.join("m/v1/a.bin")));
    assert_eq!(fs::read(v2.dir.join("a.bin")).unwrap(), new);
    assert_eq!(v2.files[0].sha256, crate::fsutil::sha256_hex(&new));
    // Read twice, counted once.
    assert_eq!(done, 400_000);
}

#[test]
fn a_stored_file_at_another_path_is_found_by_its_size() {
    let bytes = data(9, 200_000);
    let (_tmp, store, v2, _) = v2_after(
        &[("old-name.bin", &bytes, 0o644)],
        &[("sub/new-name.bin", &bytes, 0o644)],
    );
    assert_eq!(v2.linked.files, 1);
    let new_name = v2.dir.join("sub/new-name.bin");
    assert_eq!(ino(&new_name), ino(&store.join("m/v1/old-name.bin")));
}

#[test]
fn cancel_while_reading_a_stored_file_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = data(11, 200_000);
    let (store, stored) = published_v1(&tmp, &[("a.bin", &bytes, 0o644)]);
    let src = tmp.path().join("a.bin");
    fs::write(&src, &bytes).unwrap();
    let yes = AtomicBool::new(true);
    let err = stage_sharing(
        &store,
        "m",
        2,
        &[(src, "a.bin".into())],
        &yes,
        &AtomicU64::new(0),
        &stored,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Cancelled));
    assert_eq!(fs::read_dir(store.join(STAGING)).unwrap().count(), 0);
    assert_eq!(fs::metadata(store.join("m/v1/a.bin")).unwrap().nlink(), 1);
}

/// Changes one byte of the published file `path` in place (between the samples),
/// keeping its mode: damage that its recorded SHA-256 does not show.
fn damage_in_place(path: &Path, at: u64) {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).unwrap().permissions().mode();
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    File::open(path).unwrap().read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
    drop(f);
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_stored_file_damaged_between_the_samples_is_reported_and_never_linked_before_copying() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = data(13, 400_000);
    let (store, stored) = published_v1(&tmp, &[("a.bin", &bytes, 0o644)]);
    let v1 = store.join("m/v1/a.bin");
    damage_in_place(&v1, 100_000);
    let done = AtomicU64::new(0);
    let v2 = stage_files(&store, 2, &[("a.bin", &bytes, 0o644)], &stored, &done).unwrap();
    assert_eq!(v2.linked, Deduped::default());
    assert_ne!(ino(&v2.dir.join("a.bin")), ino(&v1));
    assert_eq!(fs::read(v2.dir.join("a.bin")).unwrap(), bytes);
    assert_eq!(done.load(Ordering::Relaxed), 400_000);
    let damaged = stored.damaged().take();
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert_eq!(damaged[0].0, v1);
    assert!(damaged[0].1.contains("at byte 100000"), "{}", damaged[0].1);
    // Nothing links to it after copying either.
    let saved = link_duplicates(&store, &v2, &stored).unwrap();
    assert_eq!(saved, Deduped::default());
    assert_eq!(fs::read(v2.dir.join("a.bin")).unwrap(), bytes);
}

#[test]
fn a_copy_is_not_replaced_by_a_link_to_a_damaged_stored_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (same, other) = (data(17, 50_000), data(19, 50_000));
    let (store, stored) = published_v1(&tmp, &[("a.bin", &same, 0o644), ("b.bin", &other, 0o644)]);
    damage_in_place(&store.join("m/v1/a.bin"), 49_999);
    // Copied whole (nothing probed while staging), then compared.
    let v2 = copied(
        &store,
        2,
        &[("a.bin", &same, 0o644), ("b.bin", &other, 0o644)],
    );
    let saved = link_duplicates(&store, &v2, &stored).unwrap();
    assert_eq!(
        saved,
        Deduped {
            files: 1,
            bytes: 50_000
        }
    );
    assert_ne!(ino(&v2.dir.join("a.bin")), ino(&store.join("m/v1/a.bin")));
    assert_eq!(ino(&v2.dir.join("b.bin")), ino(&store.join("m/v1/b.bin")));
    assert_eq!(fs::read(v2.dir.join("a.bin")).unwrap(), same);
    let damaged = stored.damaged().take();
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert_eq!(damaged[0].0, store.join("m/v1/a.bin"));
}
