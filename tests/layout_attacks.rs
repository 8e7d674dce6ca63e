//! Attacks on the root's layout: the lock a group member could hold, an inbox that leads
//! back into the root or the store, a store folder replaced by a link, and what the client
//! says to a user refused by an owner-only socket. Real binary, real files; another user
//! is played with `setpriv` (skipped, with a line saying so, when not root).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, TestDaemon, wait_until, write};

/// nobody: a user other than the daemon's, as an uploader is.
const OTHER: &str = "65534";

/// Whether this run can act as another user.
fn can_switch_user(test: &str) -> bool {
    let ok = unsafe { libc::geteuid() } == 0
        && Command::new("setpriv")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED {test}: needs root and setpriv to act as another user");
    }
    ok
}

/// `args` run as [`OTHER`], in group `gid`.
fn as_other(gid: &str, args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={OTHER}"),
        &format!("--regid={gid}"),
        "--clear-groups",
    ])
    .args(args);
    c
}

/// A background process killed (and reaped) on drop, however the test ends.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether something holds an flock on `path` (a non-blocking exclusive try fails).
fn locked(path: &Path) -> bool {
    !Command::new("flock")
        .args(["-n", "-x"])
        .arg(path)
        .arg("true")
        .status()
        .unwrap()
        .success()
}

/// The documented layout: the root 0755 (anyone may open it, only the daemon's user
/// write it).
fn open_root(d: &TestDaemon) {
    std::fs::set_permissions(d.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Another user holding a shared lock on the root folder (anyone who can open a folder
/// can flock it) or trying the lock file does not keep the daemon from starting.
#[test]
fn another_user_holding_a_lock_in_the_root_does_not_block_the_start() {
    if !can_switch_user("another_user_holding_a_lock_in_the_root_does_not_block_the_start") {
        return;
    }
    let mut d = TestDaemon::quick();
    d.stop();
    open_root(&d);
    let lock = d.root.path().join(".modelreg.lock");
    let mode = std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the lock file is owner-only");
    let root = d.root.path().to_str().unwrap().to_string();
    let _holder = Holder(
        as_other(OTHER, &["flock", "-s", &root, "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(10), "the root folder locked", || {
        locked(d.root.path())
    });
    // The lock file itself cannot even be opened by another user.
    let out = as_other(
        OTHER,
        &["flock", "-n", "-s", lock.to_str().unwrap(), "true"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success(), "{out:?}");
    d.spawn();
    assert!(d.status().problems.is_empty(), "{:?}", d.status().problems);
    assert!(d.log().contains("not a modelreg daemon of this user"));
}

/// The refusal names the process that really holds the lock, not a pid recorded long ago;
/// a second daemon is still refused.
#[test]
fn a_refused_start_names_the_real_holder_of_the_lock() {
    let mut d = TestDaemon::quick();
    let first = d.pid();
    let second = Command::new("timeout")
        // Bounded: a daemon that is not refused would run for ever.
        .args(["20", BIN, "serve", "--root"])
        .arg(d.root.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(
        err.contains(&format!("already running on {}", d.root.path().display())),
        "{err}"
    );
    assert!(err.contains(&format!("(pid {first})")), "{err}");
    d.stop();
    // A dead pid in the file, the lock held by another process of the same user.
    let lock = d.root.path().join(".modelreg.lock");
    std::fs::write(&lock, "999999999\n").unwrap();
    let holder = Holder(
        Command::new("flock")
            .arg("-x")
            .arg(&lock)
            .args(["sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(10), "the lock file locked", || {
        locked(&lock)
    });
    let out = Command::new("timeout")
        // Bounded: a daemon that is not refused would run for ever.
        .args(["20", BIN, "serve", "--root"])
        .arg(d.root.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains("999999999"), "a dead pid named: {err}");
    // flock(1) forks nothing: the holder is the process itself.
    assert!(err.contains(&format!("(pid {})", holder.0.id())), "{err}");
}

/// An inbox that is a link to the root or into the store registers nothing: the daemon
/// would otherwise register its own registry.yaml and store, again and again.
#[test]
fn an_inbox_leading_to_the_root_or_the_store_is_refused_at_start() {
    for (target, why) in [(".", "is the root"), ("models", "is the store")] {
        let mut d = TestDaemon::new("settle: 200ms\n");
        std::fs::create_dir_all(d.root.path().join("models")).unwrap();
        std::os::unix::fs::symlink(target, d.inbox()).unwrap();
        d.spawn();
        let problems = d.status().problems;
        assert!(
            problems.iter().any(|p| p.message.contains(why)),
            "{target}: {problems:?}"
        );
        assert!(d.status().watch.contains("refused"), "{}", d.status().watch);
        // Something dropped there is not registered, nor is the catalog. (A quiet moment
        // of three settle periods: on main, registry.yaml was registered within one.)
        write(&d.root.path().join("m.pt"), b"weights");
        std::thread::sleep(Duration::from_millis(600));
        let list = d.call(&modelreg::protocol::Request::list()).unwrap();
        assert_eq!(list["models"].as_array().map(Vec::len), Some(0), "{list}");
        d.stop();
    }
}

/// A model folder replaced by a link to somewhere else: start-up's finishing of an
/// interrupted removal deletes nothing there, `get` answers no path through it, and
/// `status` says what is wrong.
#[test]
fn a_model_folder_that_is_a_link_is_never_deleted_or_served_through() {
    let mut d = TestDaemon::quick();
    write(&d.inbox().join("vv.pt"), b"one");
    d.wait_versions("vv", 1);
    write(&d.inbox().join("vv.pt"), b"two");
    d.wait_versions("vv", 2);
    let out = d.cli(&["rm", "vv", "v1"]);
    assert!(out.status.success(), "{out:?}");
    d.stop();
    let victim = tempfile::tempdir().unwrap();
    let model = d.root.path().join("models/vv");
    for e in std::fs::read_dir(&model).unwrap().flatten() {
        std::fs::rename(e.path(), victim.path().join(e.file_name())).unwrap();
    }
    std::fs::remove_dir(&model).unwrap();
    // v1 was removed, but its folder is "still there" (as after a crash mid-removal).
    std::fs::create_dir(victim.path().join("v1")).unwrap();
    std::fs::write(victim.path().join("v1/keep.txt"), b"precious").unwrap();
    std::os::unix::fs::symlink(victim.path(), &model).unwrap();
    d.spawn();
    assert_eq!(
        std::fs::read(victim.path().join("v1/keep.txt")).unwrap(),
        b"precious"
    );
    let e = d.get("vv", "v2").unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");
    wait_until(Duration::from_secs(10), "the link shown in status", || {
        d.status()
            .problems
            .iter()
            .any(|p| p.path == model.display().to_string() && p.message.contains("never follows"))
    });
    // A new version of that model is not written through the link either.
    write(&d.inbox().join("vv.pt"), b"three");
    // The catalog names v3 (its copy waits in .staging); the rename is refused.
    d.wait_versions("vv", 3);
    assert!(!victim.path().join("v3").exists());
}

/// A user in the socket's group, refused by an owner-only socket, is told it is
/// owner-only, not "you are not in group X".
#[test]
fn an_owner_only_socket_says_so_to_a_group_member() {
    if !can_switch_user("an_owner_only_socket_says_so_to_a_group_member") {
        return;
    }
    let d = TestDaemon::quick();
    open_root(&d);
    use std::os::unix::fs::MetadataExt;
    let gid = std::fs::metadata(d.socket()).unwrap().gid().to_string();
    let out = as_other(
        &gid,
        &[BIN, "--socket", d.socket().to_str().unwrap(), "status"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("owner-only"), "{err}");
    assert!(!err.contains("not in group"), "{err}");
}
