//! Unit tests of one group's state machine: observations and probe answers in, decisions out.

use super::*;

const SETTLE: Duration = Duration::from_secs(2);

fn stat(size: u64, mtime_ns: i128) -> FileStat {
    let (ino, dev, ctime_ns) = (7, 1, mtime_ns);
    FileStat {
        size,
        mtime_ns,
        ino,
        dev,
        ctime_ns,
    }
}

fn files(list: &[(&str, FileStat)]) -> BTreeMap<String, FileStat> {
    list.iter().map(|(k, s)| (k.to_string(), *s)).collect()
}

/// Probe answers fixed by the test: the files a writer has open; marks asked about.
#[derive(Default)]
struct Kernel {
    open: BTreeSet<String>,
    asked: Vec<String>,
}

impl Probe for Kernel {
    fn keep_mark(&mut self, rel: &str, _age: Duration) -> bool {
        self.asked.push(rel.to_string());
        self.open.contains(rel)
    }
    fn held_open(&mut self, rel: &str) -> bool {
        self.open.contains(rel)
    }
}

/// A group of the single file entry `m.pt`, first seen at the returned time.
fn file_group() -> (Group, Instant) {
    let t0 = Instant::now();
    let mut g = Group::new(t0, SETTLE);
    g.entries.insert("m.pt".into());
    (g, t0)
}

/// An event on `m.pt`, which is now `st`.
fn event(g: &mut Group, writing: Option<bool>, st: FileStat, at: Instant) {
    g.observe("m.pt", "m.pt", writing, Seen::File(st), at);
}

/// The end of a period at `at`, with nothing incomplete or blocked.
fn end(g: &mut Group, now: &[(&str, FileStat)], at: Instant, k: &mut Kernel) -> Verdict {
    g.decide(files(now), None, None, at, SETTLE, k)
}

#[test]
fn a_write_then_a_quiet_period_hands_over() {
    let (mut g, t0) = file_group();
    event(&mut g, Some(true), stat(4, 1), t0);
    event(&mut g, Some(false), stat(8, 2), t0);
    assert!(g.poke(t0, SETTLE), "a new group goes into the queue");
    let v = end(
        &mut g,
        &[("m.pt", stat(8, 2))],
        t0 + SETTLE,
        &mut Kernel::default(),
    );
    assert_eq!(v, Verdict::HandOver);
    assert_eq!(g.state, State::InFlight);
}

#[test]
fn a_change_seen_only_at_the_end_restarts_the_quiet_period() {
    let (mut g, t0) = file_group();
    event(&mut g, None, stat(4, 1), t0);
    let t1 = t0 + SETTLE;
    let grown = [("m.pt", stat(9, 3))];
    let v = end(&mut g, &grown, t1, &mut Kernel::default());
    assert_eq!(v, Verdict::Wait(t1 + SETTLE), "a full period from now");
    assert_eq!(g.observed, files(&grown), "compared with what is there now");
    let v = end(&mut g, &grown, t1 + SETTLE, &mut Kernel::default());
    assert_eq!(v, Verdict::HandOver);
}

#[test]
fn a_new_write_while_queued_moves_the_deadline_without_queueing_twice() {
    let (mut g, t0) = file_group();
    assert!(g.poke(t0, SETTLE));
    let later = t0 + Duration::from_secs(1);
    assert!(!g.poke(later, SETTLE), "already in the queue");
    assert_eq!(g.deadline, later + SETTLE);
}

#[test]
fn an_open_write_mark_is_cleared_by_its_close() {
    let (mut g, t0) = file_group();
    event(&mut g, Some(true), stat(4, 1), t0);
    assert!(g.writing.contains_key("m.pt"));
    event(&mut g, Some(false), stat(4, 1), t0);
    assert!(g.writing.is_empty());
}

#[test]
fn a_deleted_file_leaves_no_stat_and_no_write_mark() {
    let (mut g, t0) = file_group();
    g.observe("d", "d/a.bin", Some(true), Seen::File(stat(1, 1)), t0);
    g.observe("d", "d/a.bin", None, Seen::Gone, t0);
    assert!(g.writing.is_empty() && g.observed.is_empty());
}

/// tar's pattern: files written in a new folder, then data writes reported on the
/// folder's own path as it sets its times, with no close ever following.
#[test]
fn a_tar_style_folder_settles_without_a_mark_on_the_folder_path() {
    let (mut g, t0) = file_group();
    let all = [("bert/config.json", stat(2, 1)), ("bert/w.bin", stat(9, 1))];
    let folder = || Seen::Folder(files(&all));
    g.observe("bert", "bert", None, folder(), t0);
    g.observe("bert", "bert/w.bin", Some(true), Seen::File(stat(9, 1)), t0);
    g.observe(
        "bert",
        "bert/w.bin",
        Some(false),
        Seen::File(stat(9, 1)),
        t0,
    );
    g.observe("bert", "bert", Some(true), folder(), t0);
    g.observe("bert", "bert", Some(true), folder(), t0);
    assert!(g.writing.is_empty(), "{:?}", g.writing);
    let v = end(&mut g, &all, t0 + SETTLE, &mut Kernel::default());
    assert_eq!(v, Verdict::HandOver);
}

/// Only a file can be open for writing: a data event on anything else (a FIFO, a
/// folder) leaves no mark that only a close could clear.
#[test]
fn a_data_write_on_something_not_a_file_sets_no_mark() {
    let (mut g, t0) = file_group();
    g.observe("p", "p", Some(true), Seen::Other, t0);
    g.observe("d", "d", Some(true), Seen::Folder(BTreeMap::new()), t0);
    assert!(g.writing.is_empty(), "{:?}", g.writing);
}

#[test]
fn a_lost_close_is_cleared_when_nobody_has_the_file_open() {
    let (mut g, t0) = file_group();
    event(&mut g, Some(true), stat(4, 1), t0);
    let mut kernel = Kernel::default();
    let v = end(&mut g, &[("m.pt", stat(4, 1))], t0 + SETTLE, &mut kernel);
    assert_eq!(kernel.asked, vec!["m.pt".to_string()]);
    assert_eq!(v, Verdict::HandOver);
}

#[test]
fn a_writer_that_still_has_the_file_open_holds_the_group() {
    let (mut g, t0) = file_group();
    event(&mut g, Some(true), stat(4, 1), t0);
    let mut kernel = Kernel::default();
    kernel.open.insert("m.pt".into());
    let v = end(&mut g, &[("m.pt", stat(4, 1))], t0 + SETTLE, &mut kernel);
    assert_eq!(v, Verdict::Wait(t0 + SETTLE + SETTLE));
    assert!(g.writing.contains_key("m.pt"));
}

#[test]
fn a_quiet_file_open_through_another_name_is_held() {
    let (mut g, t0) = file_group();
    event(&mut g, None, stat(4, 1), t0);
    let mut kernel = Kernel::default();
    kernel.open.insert("m.pt".into());
    let v = end(&mut g, &[("m.pt", stat(4, 1))], t0 + SETTLE, &mut kernel);
    assert!(matches!(v, Verdict::Wait(_)), "{v:?}");
    assert_eq!(g.writing.get("m.pt"), Some(&(t0 + SETTLE)));
}

#[test]
fn an_incomplete_group_waits_and_says_why() {
    let (mut g, t0) = file_group();
    let now = files(&[("d/a.bin", stat(1, 1))]);
    g.observe("d", "d", None, Seen::Folder(now.clone()), t0);
    let why = Some("d/b.bin.part is a temporary".to_string());
    let v = g.decide(
        now,
        why.clone(),
        None,
        t0 + SETTLE,
        SETTLE,
        &mut Kernel::default(),
    );
    assert!(matches!(v, Verdict::Wait(_)));
    assert_eq!(g.incomplete, why);
}

#[test]
fn a_blocked_group_waits_until_poked_then_settles_again() {
    let (mut g, t0) = file_group();
    let why = Some("sidecar not used".to_string());
    let v = g.decide(
        BTreeMap::new(),
        None,
        why,
        t0,
        SETTLE,
        &mut Kernel::default(),
    );
    assert_eq!(v, Verdict::Blocked);
    assert_eq!(g.state, State::Blocked("sidecar not used".into()));
    assert!(g.poke(t0, SETTLE));
    assert_eq!(g.state, State::Settling);
}

#[test]
fn events_while_registering_bring_another_round() {
    let (mut g, t0) = file_group();
    g.state = State::InFlight;
    assert!(!g.poke(t0, SETTLE), "not queued while with the registrar");
    assert!(g.again);
    let after = g.finished(Outcome::Done, t0, SETTLE);
    assert_eq!(after, After::Queue(t0 + SETTLE));
    assert_eq!(g.state, State::Settling);
}

#[test]
fn registered_and_nothing_new_is_forgotten() {
    let (mut g, t0) = file_group();
    g.state = State::InFlight;
    assert_eq!(g.finished(Outcome::Done, t0, SETTLE), After::Forget);
}

#[test]
fn a_file_changed_during_the_copy_settles_again() {
    let (mut g, t0) = file_group();
    g.state = State::InFlight;
    let after = g.finished(Outcome::Changed, t0, SETTLE);
    assert_eq!(after, After::Queue(t0 + SETTLE));
    assert_eq!(g.state, State::Settling);
}

#[test]
fn failures_back_off_doubling_up_to_a_minute() {
    let (mut g, t0) = file_group();
    let mut waits = Vec::new();
    for _ in 0..8 {
        (g.state, g.queued) = (State::InFlight, false);
        match g.finished(Outcome::Failed("disk full".into()), t0, SETTLE) {
            After::Queue(at) => waits.push((at - t0).as_secs()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(waits, vec![2, 4, 8, 16, 32, 60, 60, 60]);
    assert_eq!(g.state, State::Retry(8, "disk full".into()));
}

#[test]
fn a_blocked_outcome_waits_unless_events_came_meanwhile() {
    let (mut g, t0) = file_group();
    let bad = Outcome::Blocked("m.metrics.yaml: bad".into());
    g.state = State::InFlight;
    assert_eq!(g.finished(bad.clone(), t0, SETTLE), After::Nothing);
    assert_eq!(g.state, State::Blocked("m.metrics.yaml: bad".into()));
    (g.state, g.again) = (State::InFlight, true);
    assert_eq!(g.finished(bad, t0, SETTLE), After::Queue(t0 + SETTLE));
    assert_eq!(g.state, State::Settling);
}

#[test]
fn entry_paths_match_the_entry_and_what_is_under_it_only() {
    assert!(in_entry("bert", "bert") && in_entry("bert/w.bin", "bert"));
    assert!(!in_entry("bert-tiny", "bert") && !in_entry("bert-tiny/w.bin", "bert"));
}

#[test]
fn the_shown_state_is_timed_from_when_it_was_entered_not_from_first_seen() {
    let (mut g, t0) = file_group();
    let at = |s: u64| t0 + Duration::from_secs(s);
    event(&mut g, None, stat(1, 1), at(1));
    assert_eq!(g.entered, t0, "still settling since first seen");
    event(&mut g, Some(true), stat(4, 2), at(2));
    assert_eq!(g.entered, at(2), "writing since the first data write");
    event(&mut g, Some(true), stat(8, 3), at(3));
    assert_eq!(g.entered, at(2), "more writes are the same state");
    event(&mut g, Some(false), stat(8, 3), at(4));
    assert_eq!(g.entered, at(4), "settling since the close");
    let v = end(
        &mut g,
        &[("m.pt", stat(8, 3))],
        at(6),
        &mut Kernel::default(),
    );
    assert_eq!(v, Verdict::HandOver);
    assert_eq!(g.entered, at(6), "registering since the hand-over");
    g.finished(Outcome::Blocked("bad sidecar".into()), at(7), SETTLE);
    assert_eq!(g.entered, at(7), "blocked since the registrar said so");
    g.decide(
        BTreeMap::new(),
        None,
        Some("other".into()),
        at(9),
        SETTLE,
        &mut Kernel::default(),
    );
    assert_eq!(g.entered, at(7), "another reason is still blocked");
    assert!(g.poke(at(10), SETTLE));
    assert_eq!(g.entered, at(10), "settling again once poked");
}

#[test]
fn a_created_file_is_only_a_hint_and_its_close_clears_it() {
    let (mut g, t0) = file_group();
    event(&mut g, None, stat(0, 1), t0);
    g.saw_created("m.pt", t0);
    // `cp`: no data write until the end; the hint never holds the group back.
    let v = end(
        &mut g,
        &[("m.pt", stat(0, 1))],
        t0 + SETTLE,
        &mut Kernel::default(),
    );
    assert_eq!(v, Verdict::HandOver);
    let (mut g, t0) = file_group();
    g.saw_created("m.pt", t0);
    event(&mut g, Some(true), stat(9, 2), t0);
    event(&mut g, Some(false), stat(9, 2), t0);
    assert!(
        g.created.is_empty(),
        "closed after writing: no longer a hint"
    );
}
