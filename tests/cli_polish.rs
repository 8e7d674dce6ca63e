//! The command line on a real terminal and with hostile or unusual text: `add`'s
//! progress bar (only on a terminal), its free-space check, escaping of everything that
//! came from the daemon or the file system, tables lined up by terminal cells, compact
//! numbers, and the hint for a version written in capitals.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// A file of `mib` MiB, different for each `seed`, written without holding it in memory.
fn big_file(path: &Path, seed: u64, mib: usize) {
    use std::io::Write;
    let mut chunk = bytes(seed, 1 << 20);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..mib {
        // Each MiB differs, so nothing downstream can take a shortcut.
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
        f.write_all(&chunk).unwrap();
    }
    f.flush().unwrap();
}

/// A daemon, and a file `name` of `mib` MiB outside its root (in the returned folder).
fn daemon_and_big_file(
    name: &str,
    seed: u64,
    mib: usize,
) -> (TestDaemon, tempfile::TempDir, std::path::PathBuf) {
    let d = TestDaemon::quick();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    big_file(&file, seed, mib);
    (d, dir, file)
}

#[test]
fn add_draws_a_progress_bar_when_stderr_is_a_terminal() {
    // A few hundred MB, so that the daemon's copy and hash span several 100 ms polls.
    let (d, _dir, file) = daemon_and_big_file("bigmodel.pt", 7, 400);
    // `script` runs the command on a pseudo-terminal (stdout and stderr both go to it)
    // and copies what it printed to its own stdout; -e passes on the exit status.
    let cmd = format!(
        "{BIN} --socket '{}' add '{}' --wait --timeout 120",
        d.socket().display(),
        file.display()
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script (util-linux / bsdutils)");
    let shown = stdout(&o);
    assert!(o.status.success(), "{shown}{}", stderr(&o));
    assert!(
        shown.contains(&format!("copying {} (400.0 MiB) into", file.display())),
        "{shown:?}"
    );
    // At least one frame: `\rbigmodel [####......] 120.0 MiB/400.0 MiB 300.0 MiB/s ETA 1s`.
    let frame = shown
        .split('\r')
        .find(|f| f.starts_with("bigmodel [") && f.contains(" MiB/400.0 MiB"))
        .unwrap_or_else(|| panic!("no progress frame in {shown:?}"));
    let bar: String = frame["bigmodel [".len()..].chars().take(31).collect();
    assert!(
        bar.ends_with(']') && bar[..30].chars().all(|c| c == '#' || c == '.'),
        "{frame:?}"
    );
    // The bar's line is ended before the version is printed.
    assert!(shown.contains("\nbigmodel v1  "), "{shown:?}");
}

#[test]
fn add_in_a_pipe_prints_no_bar_and_nothing_on_stderr() {
    let (d, dir, file) = daemon_and_big_file("pipedmodel.pt", 8, 200);
    let o = d.cli(&["add", file.to_str().unwrap(), "--wait", "--timeout", "120"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stderr(&o), "", "a pipe gets no bar and no size line");
    assert!(!stdout(&o).contains('\r'), "{:?}", stdout(&o));
    assert!(stdout(&o).starts_with("pipedmodel v1  "), "{}", stdout(&o));
    // --json is the version (a file is handed over by descriptor, so its answer is the
    // version even without --wait).
    let again = dir.path().join("again.pt");
    std::fs::write(&again, b"0123456789").unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&ok(&d, &["add", again.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(json["version"]["files"][0]["size"], 10, "{json}");
}

/// Bytes an unprivileged writer may use on the file system holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

#[test]
fn add_refuses_a_source_bigger_than_the_inbox_has_room_for_before_copying_anything() {
    let d = TestDaemon::quick();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.bin");
    // Sparse: its length is more than the inbox's file system has free, its blocks none.
    let size = free_bytes(&d.inbox()) + (1 << 30);
    std::fs::File::create(&file).unwrap().set_len(size).unwrap();
    let before = inbox_names(&d);
    let err = fails(
        &d,
        &["add", file.to_str().unwrap(), "--metric", "accuracy=0.9"],
    );
    // A file is handed over by descriptor: the daemon checks its store's room.
    assert!(err.contains("huge.bin"), "{err}");
    assert!(err.contains(&format!("({size} bytes)")), "{err}");
    assert!(err.contains("the store's file system"), "{err}");
    assert!(err.contains("free; nothing was copied"), "{err}");
    // No temporary, no artifact, and no sidecar that would change another version.
    assert_eq!(inbox_names(&d), before);
}

#[test]
fn text_from_the_daemon_and_the_file_system_is_shown_escaped() {
    let d = TestDaemon::quick();
    let evil = "x\u{1b}[2Jy\u{202e}z";
    write_renamed(
        &d.inbox(),
        "resnet.metrics.yaml",
        b"metrics:\n  accuracy: 0.9\nmetadata:\n  note: \"x\\e[2Jy\\u202Ez\"\n",
    );
    write_renamed(&d.inbox(), "resnet.pt", &bytes(1, 1000));
    write_renamed(&d.inbox(), "mobilenet.pt", &bytes(2, 1000));
    d.wait_versions("resnet", 1);
    d.wait_versions("mobilenet", 1);
    let shown = r"x\u{1b}[2Jy\u{202e}z";

    // A metadata string in `get`'s table.
    let out = ok(&d, &["get", "resnet"]);
    assert!(out.contains(&format!("note={shown}")), "{out}");
    // --json escapes it too (serde_json leaves U+202E raw), and keeps the value.
    let out = ok(&d, &["get", "resnet", "--json"]);
    assert!(out.contains(r#""note": "x\u001b[2Jy\u202ez""#), "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["metadata"]["note"], evil);
    // A deprecation reason in `get`'s state line.
    ok(&d, &["deprecate", "resnet", "v1", "--reason", evil]);
    let out = ok(&d, &["get", "resnet", "v1"]);
    assert!(out.contains(shown), "{out}");
    // A removal reason quoted by the daemon's error on stderr.
    ok(&d, &["rm", "mobilenet", "v1", "--reason", evil]);
    let err = fails(&d, &["get", "mobilenet", "v1"]);
    assert!(err.contains(shown), "{err}");
    // A file name in the store reported by verify.
    let v1 = d.get("resnet", "v1").unwrap();
    let folder = Path::new(&v1.path).parent().unwrap().to_path_buf();
    let mut perm = std::fs::metadata(&folder).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&folder, perm).unwrap();
    std::fs::write(folder.join(format!("extra{evil}")), b"x").unwrap();
    let o = d.cli(&["verify"]);
    assert!(
        stdout(&o).contains(&format!("extra{shown}")),
        "{}",
        stdout(&o)
    );

    for o in [
        d.cli(&["get", "resnet", "v1"]),
        d.cli(&["get", "mobilenet", "v1"]),
        d.cli(&["verify"]),
        d.cli(&["versions", "resnet"]),
        d.cli(&["get", "resnet", "v1", "--json"]),
    ] {
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert!(
            !all.contains('\u{1b}') && !all.contains('\u{202e}'),
            "{all:?}"
        );
    }
}

#[test]
fn tables_line_up_wide_and_combining_names_and_show_numbers_compactly() {
    let d = TestDaemon::quick();
    // 4, 3, 2 and 6 terminal cells.
    for (i, name) in ["模型", "🚀x", "x\u{301}y"].iter().enumerate() {
        write_renamed(
            &d.inbox(),
            &format!("{name}.pt"),
            &bytes(10 + i as u64, 100),
        );
    }
    write_renamed(
        &d.inbox(),
        "resnet.metrics.yaml",
        b"metrics:\n  a: 1.0e300\n  b: 1.0e-300\n  c: -0.0\n  d: 0.123456789012345\n",
    );
    write_renamed(&d.inbox(), "resnet.pt", &bytes(20, 100));
    d.wait_versions("resnet", 1);
    for name in ["模型", "🚀x", "x\u{301}y"] {
        d.wait_versions(name, 1);
    }
    let out = ok(&d, &["list"]);
    // The MODEL column is 6 cells wide (resnet), then two spaces: every LATEST starts at
    // cell 8, whatever the characters before it.
    for row in [
        "MODEL   LATEST",
        "模型    v1",
        "🚀x     v1",
        "x\u{301}y      v1",
        "resnet  v1",
    ] {
        assert!(out.lines().any(|l| l.starts_with(row)), "{row:?} in\n{out}");
    }

    let out = ok(&d, &["versions", "resnet"]);
    let metrics = "a=1e300 b=1e-300 c=0 d=0.123457";
    assert!(out.contains(metrics), "{out}");
    // The PATH column starts at the same place in the header and in every row.
    let lines: Vec<&str> = out.lines().collect();
    let at = lines[0].find("PATH").unwrap();
    for l in &lines[1..] {
        assert!(
            l[at..].starts_with('/') || l[at..].starts_with("- "),
            "{out}"
        );
    }
    // --json keeps the exact values.
    let json: serde_json::Value =
        serde_json::from_str(&ok(&d, &["get", "resnet", "--json"])).unwrap();
    assert_eq!(json["metrics"]["d"], 0.123456789012345, "{json}");
    assert_eq!(json["metrics"]["a"], 1e300, "{json}");
}

#[test]
fn a_version_written_in_capitals_gets_a_hint_to_the_version() {
    let d = TestDaemon::quick();
    write_renamed(&d.inbox(), "resnet.pt", &bytes(1, 100));
    d.wait_versions("resnet", 1);
    let err = fails(&d, &["get", "resnet", "V1"]);
    assert!(
        err.contains("no alias \"V1\"; did you mean \"v1\"?"),
        "{err}"
    );
    // V1 stays a legal alias name.
    ok(&d, &["alias", "set", "resnet", "V1", "v1"]);
    assert!(ok(&d, &["get", "resnet", "V1"]).starts_with("resnet v1"));
}
