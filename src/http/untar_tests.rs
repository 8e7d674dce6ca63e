//! Unit tests of [`super`] (the tar reader): archives built header by header.

use super::*;

/// One ustar header (and content) as GNU tar writes it.
fn entry(name: &str, kind: u8, content: &[u8]) -> Vec<u8> {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[124..135].copy_from_slice(format!("{:011o}", content.len()).as_bytes());
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = h.to_vec();
    out.extend(content);
    out.resize(out.len() + padding(content.len() as u64) as usize, 0);
    out
}

fn run(parts: &[Vec<u8>]) -> (tempfile::TempDir, Result<Extracted, Refused>) {
    let dir = tempfile::tempdir().unwrap();
    let mut tar: Vec<u8> = parts.concat();
    tar.extend([0u8; 1024]);
    let r = extract(&mut tar.as_slice(), &dir.path().join("out"));
    (dir, r)
}

#[test]
fn files_and_folders_are_extracted() {
    let (dir, r) = run(&[
        entry("./", b'5', b""),
        entry("./sub/", b'5', b""),
        entry("./sub/a.txt", b'0', b"hello"),
        entry("config.json", b'0', b"{}"),
    ]);
    let x = r.unwrap();
    assert_eq!((x.files, x.bytes), (2, 7));
    let rels: Vec<_> = x.list.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(rels, ["config.json", "sub/a.txt"]);
    assert_eq!(
        std::fs::read(dir.path().join("out/sub/a.txt")).unwrap(),
        b"hello"
    );
}

#[test]
fn folders_not_listed_are_made_and_hidden_entries_left_out() {
    let (dir, r) = run(&[
        entry("a/b/c.bin", b'0', b"abc"),
        entry("a/.cache/x", b'0', b"x"),
        entry(".gitattributes", b'0', b"y"),
        entry("a/d.bin", b'0', b"d"),
    ]);
    let x = r.unwrap();
    assert_eq!((x.files, x.bytes), (2, 4));
    assert_eq!(x.left_out, ["a/.cache", ".gitattributes"]);
    assert_eq!(
        std::fs::read(dir.path().join("out/a/b/c.bin")).unwrap(),
        b"abc"
    );
    assert!(!dir.path().join("out/.gitattributes").exists());
    for name in [
        "a/w.bin.part",
        "sub.tmp/x.bin",
        "notes~",
        "sub.tmp/",
        ".x.part",
    ] {
        let kind = if name.ends_with('/') { b'5' } else { b'0' };
        let (_d, r) = run(&[entry(name, kind, b""), entry("ok.bin", b'0', b"x")]);
        let e = r.unwrap_err().0;
        assert!(
            e.contains("temporary name") && e.contains(name),
            "{name}: {e}"
        );
    }
    // Below a hidden folder, nothing is looked at (the inbox does not walk it).
    let (_d, r) = run(&[
        entry(".cache/x.part", b'0', b"x"),
        entry("ok.bin", b'0', b"x"),
    ]);
    assert_eq!(r.unwrap().left_out, [".cache"]);
}

#[test]
fn compressed_bodies_are_told_apart_from_a_tar() {
    assert_eq!(
        not_a_tar(b"\x1f\x8b\x08\x00"),
        Some("gzip-compressed (a .tar.gz or .tgz)")
    );
    assert!(not_a_tar(b"BZh91AY").unwrap().contains("bzip2"));
    assert_eq!(not_a_tar(&entry("model.bin", b'0', b"x")), None);
    assert_eq!(not_a_tar(b""), None);
}

#[test]
fn hostile_entries_are_refused() {
    for (name, kind, why) in [
        ("../evil", b'0', "goes up"),
        ("a/../../evil", b'0', "goes up"),
        ("/etc/evil", b'0', "absolute"),
        ("link", b'2', "symbolic link"),
        ("hard", b'1', "hard link"),
        ("dev", b'3', "device"),
        ("fifo", b'6', "FIFO"),
        ("a\\b", b'0', "component"),
    ] {
        let (_d, r) = run(&[entry(name, kind, b"x")]);
        let e = r.unwrap_err().0;
        assert!(e.contains(why), "{name}: {e}");
    }
    for (first, then, why) in [
        (("a", b'0'), ("./a", b'0'), "the tar holds \"a\" twice"),
        (("a/", b'5'), ("a", b'0'), "both as a folder and as a file"),
        (("a", b'0'), ("a/", b'5'), "both as a folder and as a file"),
        (
            ("a", b'0'),
            ("a/b/c", b'0'),
            "holds \"a\" as a file and \"a/b/c\" below it",
        ),
    ] {
        let (_d, r) = run(&[entry(first.0, first.1, b""), entry(then.0, then.1, b"")]);
        let e = r.unwrap_err().0;
        assert!(e.contains(why), "{first:?} {then:?}: {e}");
    }
    let (_d, r) = run(&[entry("only/", b'5', b"")]);
    assert!(r.unwrap_err().0.contains("no file"));
    let mut bad = entry("a", b'0', b"x");
    bad[0] = b'b';
    let (_d, r) = run(&[bad]);
    assert!(r.unwrap_err().0.contains("checksum"));
}
