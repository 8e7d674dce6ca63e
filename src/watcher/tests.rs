//! The settler driven end to end by events on a real temporary inbox, with a zero settle period.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{
    AccessKind, AccessMode, CreateKind, DataChange, EventKind, MetadataKind, ModifyKind,
};
use tokio::sync::mpsc;

use super::Settler;
use super::lease::open_for_writing;
use crate::messages::{Outcome, RegistrarMsg};
use crate::status::StatusBoard;

fn settler(inbox: &Path) -> (Settler<()>, mpsc::UnboundedReceiver<RegistrarMsg<()>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let board = Arc::new(StatusBoard::default());
    // A zero settle period: every group is due at once, so the state machine is
    // driven by `check_due` calls alone.
    let s = Settler::new(inbox.to_path_buf(), Duration::ZERO, false, board, tx);
    (s, rx)
}

fn ev(s: &mut Settler<()>, kind: EventKind, p: &Path) {
    s.on_fs(Ok(notify::Event::new(kind).add_path(p.to_path_buf())));
}

fn handed_over(rx: &mut mpsc::UnboundedReceiver<RegistrarMsg<()>>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        if let RegistrarMsg::Settled(s) = m {
            out.push(s.name);
        }
    }
    out
}

fn state_of(s: &Settler<()>, name: &str) -> Option<(String, String)> {
    s.waiting()
        .into_iter()
        .find(|w| w.name == name)
        .map(|w| (w.state, w.reason.unwrap_or_default()))
}

const DATA: EventKind = EventKind::Modify(ModifyKind::Data(DataChange::Any));
const CLOSED: EventKind = EventKind::Access(AccessKind::Close(AccessMode::Write));

/// tar's pattern: the folder is created, files are written (some before the folder's
/// watch exists, so without events), then data writes are reported on the folder's
/// own path as tar sets its times. The folder path never holds a write mark.
#[test]
fn data_events_on_a_folder_path_are_no_open_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bert-tiny");
    std::fs::create_dir(&dir).unwrap();
    for f in ["model.safetensors", "config.json", "vocab.txt"] {
        std::fs::write(dir.join(f), f).unwrap();
    }
    let (mut s, mut rx) = settler(tmp.path());
    ev(&mut s, EventKind::Create(CreateKind::Folder), &dir);
    ev(&mut s, DATA, &dir.join("model.safetensors"));
    ev(&mut s, CLOSED, &dir.join("model.safetensors"));
    ev(&mut s, DATA, &dir);
    ev(&mut s, DATA, &dir);
    ev(
        &mut s,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
        &dir,
    );
    assert_ne!(state_of(&s, "bert-tiny").unwrap().0, "writing");
    s.check_due();
    assert_eq!(handed_over(&mut rx), vec!["bert-tiny".to_string()]);
    assert_eq!(state_of(&s, "bert-tiny").unwrap().0, "registering");
    s.on_done("bert-tiny".into(), Outcome::Done);
    assert!(s.waiting().is_empty(), "forgotten once registered");
}

/// A data write whose close-after-write was lost (dropped events): once the file has
/// been quiet for a period, the kernel says nobody has it open, and the mark goes.
#[test]
fn a_write_mark_whose_close_was_lost_is_cleared_from_the_file_system() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("lost.pt");
    std::fs::write(&f, b"all of it").unwrap();
    let (mut s, mut rx) = settler(tmp.path());
    ev(&mut s, DATA, &f);
    assert_eq!(state_of(&s, "lost").unwrap().0, "writing");
    s.check_due();
    assert_eq!(handed_over(&mut rx), vec!["lost".to_string()]);
}

/// A writer that still has the file open keeps it "writing", with the path and how
/// long ago it was last written as the reason; when it closes (no event needed), the
/// next look hands it over.
#[test]
fn an_open_writer_holds_the_entry_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("slow.pt");
    let mut f = std::fs::File::create(&path).unwrap();
    std::io::Write::write_all(&mut f, b"half").unwrap();
    let (mut s, mut rx) = settler(tmp.path());
    ev(&mut s, DATA, &path);
    s.check_due();
    if open_for_writing(&path).is_none() {
        eprintln!("no leases here; the time bound applies instead");
        return;
    }
    // A lease broken by a writer's open sends SIGIO: it must not end the daemon.
    // SAFETY: raising a signal whose disposition the probe set to SIG_IGN.
    unsafe { libc::raise(libc::SIGIO) };
    assert!(handed_over(&mut rx).is_empty(), "held while open");
    let (state, reason) = state_of(&s, "slow").unwrap();
    assert_eq!(state, "writing");
    assert!(reason.contains("slow.pt is open for writing"), "{reason}");
    drop(f);
    s.check_due();
    assert_eq!(handed_over(&mut rx), vec!["slow".to_string()]);
}

/// Blocked and retrying groups say why, and a rescan looks at them again: no state
/// waits for an event that may never come.
#[test]
fn blocked_and_retrying_say_why_and_rescan_looks_again() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a.pt"), b"a").unwrap();
    std::fs::write(tmp.path().join("b.pt"), b"b").unwrap();
    let (mut s, mut rx) = settler(tmp.path());
    s.rescan(false);
    s.check_due();
    let mut got = handed_over(&mut rx);
    got.sort();
    assert_eq!(got, vec!["a".to_string(), "b".to_string()]);
    s.on_done("a".into(), Outcome::Blocked("a.metrics.yaml: bad".into()));
    s.on_done("b".into(), Outcome::Failed("disk full".into()));
    assert_eq!(
        state_of(&s, "a").unwrap(),
        ("blocked".into(), "a.metrics.yaml: bad".into())
    );
    assert_eq!(
        state_of(&s, "b").unwrap(),
        ("retrying".into(), "attempt 1 failed: disk full".into())
    );
    s.rescan(false);
    assert_eq!(state_of(&s, "a").unwrap().0, "settling");
    s.check_due();
    assert!(handed_over(&mut rx).contains(&"a".to_string()));
}

/// A folder holding a temporary waits, saying so; once the temporary is gone it is
/// handed over without any event.
#[test]
fn an_incomplete_folder_says_why_and_is_looked_at_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("w.bin"), b"w").unwrap();
    std::fs::write(dir.join("x.bin.part"), b"x").unwrap();
    let (mut s, mut rx) = settler(tmp.path());
    ev(&mut s, EventKind::Create(CreateKind::Folder), &dir);
    s.check_due();
    assert!(handed_over(&mut rx).is_empty());
    let (state, reason) = state_of(&s, "m").unwrap();
    assert_eq!(state, "settling");
    assert!(reason.starts_with("incomplete"), "{reason}");
    std::fs::remove_file(dir.join("x.bin.part")).unwrap();
    s.check_due();
    s.check_due();
    assert_eq!(handed_over(&mut rx), vec!["m".to_string()]);
}

/// Overflowed events (notify's rescan flag): the whole inbox is looked at again and open
/// write marks are dropped, since their close may be among the lost events.
#[test]
fn an_overflow_rescans_the_inbox_and_drops_write_marks() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("big.pt");
    std::fs::write(&f, b"bytes").unwrap();
    let (mut s, mut rx) = settler(tmp.path());
    ev(&mut s, DATA, &f);
    assert_eq!(state_of(&s, "big").unwrap().0, "writing");
    std::fs::write(tmp.path().join("quiet.pt"), b"no event").unwrap();
    s.on_fs(Ok(
        notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan)
    ));
    assert_eq!(state_of(&s, "big").unwrap().0, "settling", "mark dropped");
    assert_eq!(
        state_of(&s, "quiet").unwrap().0,
        "settling",
        "a file with no event of its own is found by the rescan"
    );
    s.check_due();
    let mut got = handed_over(&mut rx);
    got.sort();
    assert_eq!(got, vec!["big".to_string(), "quiet".to_string()]);
}

/// A write while the group is with the registrar is not lost: once the registrar is done,
/// the group settles again instead of being forgotten.
#[test]
fn a_write_during_registration_brings_another_round() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("m.pt");
    std::fs::write(&f, b"v1").unwrap();
    let (mut s, mut rx) = settler(tmp.path());
    ev(&mut s, CLOSED, &f);
    s.check_due();
    assert_eq!(handed_over(&mut rx), vec!["m".to_string()]);
    std::fs::write(&f, b"v2, longer").unwrap();
    ev(&mut s, CLOSED, &f);
    assert_eq!(state_of(&s, "m").unwrap().0, "registering");
    s.on_done("m".into(), Outcome::Done);
    assert_eq!(state_of(&s, "m").unwrap().0, "settling");
    s.check_due();
    assert_eq!(handed_over(&mut rx), vec!["m".to_string()]);
}
