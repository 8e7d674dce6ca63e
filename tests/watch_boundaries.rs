//! What the watcher and the settler do at the edges of the inbox: links that lead out of
//! it, folders and files the daemon's user may not read, empty folders and special files.
//! The daemon is the real binary; where permissions matter it runs as another user
//! (`setpriv` to nobody), because root reads everything.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{TestDaemon, can_switch_user, wait_until, write};

/// How many inotify watches the process `pid` holds (from /proc/PID/fdinfo).
fn inotify_watches(pid: u32) -> usize {
    let mut n = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(fd.path()) {
            n += text
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count();
        }
    }
    n
}

/// Waits until `status` lists a problem whose path ends with `entry`; returns its message.
fn wait_problem(d: &TestDaemon, entry: &str) -> String {
    let mut msg = String::new();
    wait_until(
        Duration::from_secs(20),
        &format!("a problem about {entry}"),
        || {
            let found = d
                .status()
                .problems
                .into_iter()
                .find(|p| p.path.ends_with(entry));
            msg = found.map(|p| p.message).unwrap_or_default();
            !msg.is_empty()
        },
    );
    msg
}

/// A folder outside the inbox holding a few folders and a dangling link.
fn outside_tree() -> tempfile::TempDir {
    let out = tempfile::Builder::new().prefix("mrout").tempdir().unwrap();
    for sub in ["a", "a/b", "a/b/c", "d", "e"] {
        std::fs::create_dir(out.path().join(sub)).unwrap();
    }
    std::os::unix::fs::symlink("/nonexistent-modelreg-target", out.path().join("gone")).unwrap();
    out
}

fn chown_root(path: &Path, mode: u32) {
    std::os::unix::fs::chown(path, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A link inside the inbox to a folder outside it puts no inotify watch outside the
/// inbox, at start or when added later; new real folders are still watched.
#[test]
fn inotify_never_follows_links_out_of_the_inbox() {
    let out = outside_tree();
    let mut d = TestDaemon::new("settle: 300ms\nwatch: inotify\n");
    std::fs::create_dir_all(d.inbox().join("subd")).unwrap();
    std::os::unix::fs::symlink(out.path(), d.inbox().join("subd/out")).unwrap();
    d.spawn();
    let msg = wait_problem(&d, "subd");
    assert!(msg.contains("outside the inbox"), "{msg}");
    assert_eq!(
        inotify_watches(d.pid()),
        2,
        "only the inbox and subd are watched, nothing through the link"
    );
    // Added while running: a link (not followed) and a real folder tree (watched).
    std::os::unix::fs::symlink(out.path(), d.inbox().join("subd/late")).unwrap();
    std::fs::create_dir(d.inbox().join("newm")).unwrap();
    std::fs::create_dir(d.inbox().join("newm/deeper")).unwrap();
    write(&d.inbox().join("newm/deeper/w.bin"), b"weights");
    d.wait_versions("newm", 1);
    assert_eq!(
        inotify_watches(d.pid()),
        4,
        "inbox, subd, newm, newm/deeper"
    );
    assert!(
        d.status().watch.starts_with("inotify"),
        "{}",
        d.status().watch
    );
}

/// The poll watcher does not walk through links either: a dangling link in a folder
/// reached only through a link out of the inbox makes no error.
#[test]
fn poll_never_follows_links_out_of_the_inbox() {
    let out = outside_tree();
    let mut d = TestDaemon::new("settle: 300ms\nwatch: poll\npoll_interval: 200ms\n");
    std::fs::create_dir_all(d.inbox().join("subd")).unwrap();
    std::os::unix::fs::symlink(out.path(), d.inbox().join("subd/out")).unwrap();
    d.spawn();
    wait_problem(&d, "subd");
    write(&d.inbox().join("m.bin"), b"after some polls");
    d.wait_versions("m", 1);
    let errors = d.status().recent_errors;
    assert!(
        errors
            .iter()
            .all(|e| !e.message.contains("gone") && !e.message.contains("subd/out/")),
        "the poller walked out of the inbox: {errors:?}"
    );
}

/// A folder the daemon cannot read is a problem for that entry (owner, mode, what to
/// do); the rest of the inbox stays on inotify and is registered.
#[test]
fn unreadable_folder_is_a_problem_and_inotify_stays() {
    if !can_switch_user("unreadable_folder_is_a_problem_and_inotify_stays") {
        return;
    }
    let mut d = TestDaemon::new("settle: 300ms\n");
    std::fs::create_dir_all(d.inbox()).unwrap();
    let x = d.inbox().join("x");
    std::fs::create_dir(&x).unwrap();
    write(&x.join("w.bin"), b"hidden");
    d.give_to_nobody();
    chown_root(&x, 0o700);
    d.spawn_as_nobody();
    let msg = wait_problem(&d, "pretrained_models/x");
    for part in ["owner root", "mode 0700", "chgrp -R nogroup", "cp"] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    let st = d.status();
    assert!(st.watch.starts_with("inotify"), "{}", st.watch);
    write(&d.inbox().join("ok.bin"), b"readable");
    d.wait_versions("ok", 1);
    assert!(!d.log().contains("max_user_watches"), "{}", d.log());
    // Made readable: registered, and from then on watched like any folder.
    std::os::unix::fs::chown(&x, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&x, std::fs::Permissions::from_mode(0o755)).unwrap();
    d.wait_versions("x", 1);
    write(&x.join("w.bin"), b"new weights");
    d.wait_versions("x", 2);
}

/// With `watch: poll`, a folder the daemon cannot read is a problem, not an error
/// logged at every poll.
#[test]
fn unreadable_folder_under_poll_is_one_problem() {
    if !can_switch_user("unreadable_folder_under_poll_is_one_problem") {
        return;
    }
    let mut d = TestDaemon::new(
        "settle: 300ms
watch: poll
poll_interval: 200ms
",
    );
    std::fs::create_dir_all(d.inbox()).unwrap();
    let x = d.inbox().join("x");
    std::fs::create_dir(&x).unwrap();
    d.give_to_nobody();
    chown_root(&x, 0o700);
    d.spawn_as_nobody();
    wait_problem(&d, "pretrained_models/x");
    write(&d.inbox().join("ok.bin"), b"after some polls");
    d.wait_versions("ok", 1);
    let errors = d.status().recent_errors;
    assert!(
        errors.iter().all(|e| !e.message.contains("watching")),
        "{errors:?}"
    );
}

/// A file the daemon cannot read (`mv` kept the uploader's group and a 027 umask) is a
/// problem naming owner, group and mode, not a copy retried for ever; made readable, it
/// is registered.
#[test]
fn unreadable_file_is_a_problem_until_made_readable() {
    if !can_switch_user("unreadable_file_is_a_problem_until_made_readable") {
        return;
    }
    let mut d = TestDaemon::new("settle: 300ms\n");
    std::fs::create_dir_all(d.inbox()).unwrap();
    d.give_to_nobody();
    d.spawn_as_nobody();
    let staged = d.root.path().join("staged.bin");
    write(&staged, b"secret-ish weights");
    chown_root(&staged, 0o640);
    std::fs::rename(&staged, d.inbox().join("f.bin")).unwrap();
    let msg = wait_problem(&d, "f.bin");
    for part in [
        "owner root",
        "group root",
        "mode 0640",
        "chgrp nogroup",
        "cp",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert!(d.versions("f").is_empty());
    std::fs::set_permissions(
        d.inbox().join("f.bin"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    d.wait_versions("f", 1);
    wait_until(Duration::from_secs(10), "the problem to clear", || {
        d.status()
            .problems
            .iter()
            .all(|p| !p.path.ends_with("f.bin"))
    });
}

/// `mkdir` first, files later than the settle period: the empty folder waits and
/// becomes a version only with its files.
#[test]
fn empty_folder_waits_for_its_files() {
    let d = TestDaemon::start("settle: 200ms\n");
    std::fs::create_dir(d.inbox().join("emptydir")).unwrap();
    wait_until(Duration::from_secs(20), "emptydir waiting 1.5 s", || {
        d.status()
            .waiting
            .iter()
            .any(|w| w.name == "emptydir" && w.since_secs > 1.5)
            || !d.versions("emptydir").is_empty()
    });
    assert!(
        d.versions("emptydir").is_empty(),
        "an empty folder became a version"
    );
    write(&d.inbox().join("emptydir/w.bin"), b"late weights");
    let v = d.wait_versions("emptydir", 1);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].version, "v1");
}

/// A named pipe inside a folder is refused with a reason, not skipped silently.
#[test]
fn special_file_in_a_folder_is_refused() {
    let d = TestDaemon::quick();
    let dir = d.inbox().join("withfifo");
    std::fs::create_dir(&dir).unwrap();
    write(&dir.join("a.bin"), b"weights");
    let fifo = std::ffi::CString::new(dir.join("p").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let msg = wait_problem(&d, "withfifo");
    assert!(msg.contains("named pipe"), "{msg}");
    assert!(d.versions("withfifo").is_empty());
}
