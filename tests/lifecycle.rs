//! Issue 8: promotion and rollback with aliases, stable symlinked paths, deprecation,
//! removal with tombstones, retention — end to end, through the socket and the CLI.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use modelreg::protocol::{ErrorCode, Request};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Registers `n` versions of `name`, version i with accuracy `acc[i]`.
fn register(d: &TestDaemon, name: &str, acc: &[f64]) -> Vec<Vec<u8>> {
    let mut contents = Vec::new();
    let have = d.versions(name).len();
    for (i, a) in acc.iter().enumerate() {
        write(
            &d.inbox().join(format!("{name}.metrics.yaml")),
            sidecar(&[("accuracy", *a)]).as_bytes(),
        );
        let data = bytes(1000 + (have + i) as u64 + name.len() as u64 * 97, 2000);
        write(&d.inbox().join(format!("{name}.pt")), &data);
        d.wait_versions(name, have + i + 1);
        contents.push(data);
    }
    contents
}

fn link(d: &TestDaemon, name: &str, l: &str) -> Option<PathBuf> {
    std::fs::read_link(d.root.path().join("models").join(name).join(l)).ok()
}

/// Promote v1 to production, then v2, then roll back: production is v1 again, and the
/// history lists every move with who and when.
#[test]
fn promote_then_rollback_restores_previous_version_with_history() {
    let d = TestDaemon::quick();
    let contents = register(&d, "m", &[0.7, 0.8]);
    let out = d.cli(&["alias", "set", "m", "production", "v1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(d.get("m", "production").unwrap().version, "v1");
    let out = d.cli(&["alias", "set", "m", "production", "v2"]);
    assert!(
        text(&out).contains("production -> v2 (was v1)"),
        "{}",
        text(&out)
    );
    assert_eq!(d.get("m", "production").unwrap().version, "v2");
    assert_eq!(link(&d, "m", "production"), Some(PathBuf::from("v2")));

    let out = d.cli(&["rollback", "m", "production"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("rolled back v2 -> v1"),
        "{}",
        text(&out)
    );
    assert_eq!(d.get("m", "production").unwrap().version, "v1");
    // The stable path opens v1's file, as `torch.load("models/m/production/m.pt")` would.
    assert_eq!(
        std::fs::read(d.root.path().join("models/m/production/m.pt")).unwrap(),
        contents[0]
    );

    let h = d.call(&Request::History { name: "m".into() }).unwrap();
    let moves = h["history"].as_array().unwrap();
    assert_eq!(moves.len(), 3, "{h}");
    assert_eq!(
        (moves[0]["from"].as_u64(), moves[0]["to"].as_u64()),
        (None, Some(1))
    );
    assert_eq!(
        (moves[1]["from"].as_u64(), moves[1]["to"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(
        (
            moves[2]["from"].as_u64(),
            moves[2]["to"].as_u64(),
            moves[2]["by"].as_str()
        ),
        (Some(2), Some(1), Some("rollback"))
    );
    assert_eq!(
        moves[0]["uid"].as_u64(),
        Some(unsafe { libc::geteuid() } as u64),
        "who: the peer's uid"
    );
    let out = d.cli(&["history", "m"]);
    assert!(
        text(&out).contains("production -> v1") && text(&out).contains("rollback"),
        "{}",
        text(&out)
    );
    // The history is in registry.yaml.
    let c = d.catalog();
    assert_eq!(c.models["m"].alias_history.len(), 3);
    assert_eq!(c.models["m"].aliases["production"], 1);

    for (alias, code) in [
        ("latest", ErrorCode::InvalidName),
        ("v3", ErrorCode::InvalidName),
    ] {
        let e = d
            .call(&Request::AliasSet {
                name: "m".into(),
                alias: alias.into(),
                version: "v1".into(),
            })
            .unwrap_err();
        assert_eq!(e.code(), Some(code), "{alias}");
    }
    let e = d
        .call(&Request::AliasSet {
            name: "m".into(),
            alias: "staging".into(),
            version: "v9".into(),
        })
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::VersionNotFound));
    assert_eq!(
        d.get("m", "staging").unwrap_err().code(),
        Some(ErrorCode::AliasNotFound)
    );
}

/// latest, best and alias symlinks always resolve to what the socket answers, including
/// right after a registration that changes best.
#[test]
fn symlinks_follow_the_catalog() {
    let d = TestDaemon::quick();
    register(&d, "s", &[0.7]);
    assert_eq!(link(&d, "s", "latest"), Some(PathBuf::from("v1")));
    assert_eq!(link(&d, "s", "best"), Some(PathBuf::from("v1")));
    for (i, acc) in [0.9, 0.6, 0.95].iter().enumerate() {
        write(
            &d.inbox().join("s.metrics.yaml"),
            sidecar(&[("accuracy", *acc)]).as_bytes(),
        );
        write(&d.inbox().join("s.pt"), &bytes(5000 + i as u64, 500));
        // The moment the socket shows the version, the links already agree.
        d.wait_versions("s", i + 2);
        for sel in ["latest", "best"] {
            let v = d.get("s", sel).unwrap();
            assert_eq!(
                link(&d, "s", sel),
                Some(PathBuf::from(&v.version)),
                "{sel} after v{}",
                i + 2
            );
            let via_link = d.root.path().join("models/s").join(sel).join("s.pt");
            assert_eq!(
                std::fs::read(via_link).unwrap(),
                std::fs::read(&v.path).unwrap()
            );
        }
    }
    assert_eq!(link(&d, "s", "best"), Some(PathBuf::from("v4")));
    // Deprecating the best moves the link.
    d.call(&Request::Deprecate {
        name: "s".into(),
        version: "v4".into(),
        reason: Some("bad data".into()),
    })
    .unwrap();
    assert_eq!(link(&d, "s", "best"), Some(PathBuf::from("v2")));
    assert_eq!(link(&d, "s", "latest"), Some(PathBuf::from("v3")));
    let out = d.cli(&["verify"]);
    assert!(
        out.status.success(),
        "links are not extra files: {}",
        text(&out)
    );
}

/// rm of an aliased version is refused; with --force the alias is dropped (and said so);
/// the number is never reused; get says when and why it was removed.
#[test]
fn rm_leaves_a_tombstone_and_never_reuses_the_number() {
    let d = TestDaemon::quick();
    register(&d, "r", &[0.1, 0.2, 0.3]);
    d.cli(&["alias", "set", "r", "production", "v2"]);
    let out = d.cli(&["rm", "r", "v2", "--reason", "leaked test data"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("production") && text(&out).contains("--force"),
        "{}",
        text(&out)
    );
    assert!(
        Path::new(&d.get("r", "v2").unwrap().path).exists(),
        "nothing removed"
    );

    let out = d.cli(&["rm", "r", "v2", "--reason", "leaked test data", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("aliases dropped: production"),
        "{}",
        text(&out)
    );
    let e = d.get("r", "v2").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::VersionRemoved));
    assert!(e.to_string().contains("leaked test data"), "{e}");
    assert!(!d.root.path().join("models/r/v2").exists(), "files deleted");
    assert!(
        link(&d, "r", "production").is_none(),
        "the alias link went with the alias"
    );
    let removed = &d.catalog().models["r"].versions[1];
    assert!(
        removed.removed.is_some() && !removed.files.is_empty(),
        "a tombstone keeps the record"
    );

    // Remove the newest too: the next registration still gets a new number.
    d.call(&Request::Rm {
        name: "r".into(),
        version: "v3".into(),
        reason: None,
        force: false,
    })
    .unwrap();
    assert_eq!(d.get("r", "latest").unwrap().version, "v1");
    write(&d.inbox().join("r.pt"), b"brand new weights");
    wait_until(Duration::from_secs(20), "v4", || d.get("r", "v4").is_ok());
    assert_eq!(d.get("r", "latest").unwrap().version, "v4");
    let states: Vec<String> = d
        .versions("r")
        .iter()
        .map(|v| format!("{}:{}", v.version, v.state))
        .collect();
    assert_eq!(states, ["v1:live", "v2:removed", "v3:removed", "v4:live"]);
    let out = d.cli(&["verify"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Deprecated versions are hidden from latest and best, still reachable by number.
#[test]
fn deprecated_versions_are_hidden_from_latest_and_best() {
    let d = TestDaemon::quick();
    register(&d, "p", &[0.9, 0.5]);
    let out = d.cli(&["deprecate", "p", "v1", "--reason", "eval bug"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(d.get("p", "best").unwrap().version, "v2");
    let v1 = d.get("p", "v1").unwrap();
    assert_eq!(v1.state, "deprecated");
    assert_eq!(v1.mark.unwrap().reason.as_deref(), Some("eval bug"));
    d.cli(&["deprecate", "p", "v2"]);
    assert_eq!(
        d.get("p", "latest").unwrap_err().code(),
        Some(ErrorCode::VersionNotFound)
    );
    assert!(
        d.status()
            .recent_changes
            .iter()
            .any(|c| c.message.contains("p v1 deprecated: eval bug"))
    );
}

/// gc --dry-run lists exactly what gc then deletes; aliased and best versions survive.
#[test]
fn gc_dry_run_lists_what_gc_deletes_and_spares_aliased_and_best() {
    let d = TestDaemon::start("settle: 300ms\nretention: {\"*\": 2}\n");
    register(&d, "g", &[0.99, 0.2, 0.3, 0.4, 0.5, 0.6]);
    d.cli(&["alias", "set", "g", "staging", "v2"]);
    let dry = d
        .call(&Request::Gc {
            name: None,
            dry_run: true,
        })
        .unwrap();
    let listed: Vec<&str> = dry["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        ["v3", "v4"],
        "not the best (v1), not the aliased (v2), not the newest two"
    );
    assert_eq!(dry["bytes"].as_u64(), Some(4000));
    assert_eq!(
        d.versions("g").iter().filter(|v| v.state == "live").count(),
        6,
        "a dry run removes nothing"
    );
    let out = d.cli(&["gc", "--dry-run"]);
    assert!(
        text(&out).contains("would remove g v3") && text(&out).contains("would free 3.9 KiB"),
        "{}",
        text(&out)
    );

    let done = d
        .call(&Request::Gc {
            name: None,
            dry_run: false,
        })
        .unwrap();
    assert_eq!(
        done["versions"], dry["versions"],
        "gc removes exactly what the dry run listed"
    );
    let states: Vec<String> = d
        .versions("g")
        .iter()
        .map(|v| format!("{}:{}", v.version, v.state))
        .collect();
    assert_eq!(
        states,
        [
            "v1:live",
            "v2:live",
            "v3:removed",
            "v4:removed",
            "v5:live",
            "v6:live"
        ]
    );
    assert_eq!(d.get("g", "best").unwrap().version, "v1");
    assert_eq!(d.get("g", "staging").unwrap().version, "v2");
    assert!(d.cli(&["verify"]).status.success());
}

/// Changes are refused to other users (SO_PEERCRED); reading is not.
#[test]
fn changes_need_the_daemons_uid() {
    let d = TestDaemon::quick();
    register(&d, "u", &[0.5]);
    let has_setpriv = std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if unsafe { libc::geteuid() } != 0 || !has_setpriv {
        eprintln!(
            "SKIPPED changes_need_the_daemons_uid: needs root and setpriv to act as another user"
        );
        return;
    }
    // Let everyone connect, to reach the uid check behind the file permissions.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                BIN,
                "--socket",
            ])
            .arg(d.socket())
            .args(args)
            .output()
            .unwrap()
    };
    let out = as_nobody(&["alias", "set", "u", "production", "v1"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("only uid 0"), "{}", text(&out));
    let out = as_nobody(&["list"]);
    assert!(out.status.success(), "reading is allowed: {}", text(&out));
    assert!(d.get("u", "production").is_err(), "nothing changed");
}

/// A crash after an `rm` was written to registry.yaml but before the files were deleted:
/// the next start deletes exactly the tombstoned version's files, nothing else.
#[test]
fn interrupted_rm_is_finished_at_start() {
    let mut d = TestDaemon::quick();
    register(&d, "t", &[0.1, 0.2]);
    register(&d, "keep", &[0.3]);
    assert!(d.stop().success());
    // What registry.yaml holds when a crash hits between the tombstone and the deletion.
    let reg = d.registry_path();
    let mut c = modelreg::registry::persist::load(&reg).unwrap().unwrap();
    let m = std::sync::Arc::make_mut(c.models.get_mut("t").unwrap());
    std::sync::Arc::make_mut(&mut m.versions[0]).removed =
        Some(Box::new(modelreg::registry::Mark {
            at: "2026-11-26T00:00:00Z".into(),
            reason: None,
            uid: None,
        }));
    modelreg::registry::persist::write_atomic(
        &reg,
        modelreg::registry::persist::to_yaml(&c).unwrap().as_bytes(),
    )
    .unwrap();
    let v1 = d.root.path().join("models/t/v1");
    assert!(v1.exists());
    d.spawn();
    assert!(!v1.exists(), "the interrupted removal is finished");
    assert!(d.root.path().join("models/t/v2/t.pt").exists());
    assert!(d.root.path().join("models/keep/v1/keep.pt").exists());
    assert_eq!(
        d.get("t", "v1").unwrap_err().code(),
        Some(ErrorCode::VersionRemoved)
    );
    let out = d.cli(&["verify"]);
    assert!(out.status.success(), "{}", text(&out));
}
