//! Connection handling under hostile clients: thousands of idle connections and hundreds
//! that send requests and never read their answers must not keep a well-behaved client
//! from being answered, nor grow the daemon without bound.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestDaemon, bytes, wait_until, write};
use modelreg::client::Client;
use modelreg::protocol::Request;

/// Raises this process's soft open-files limit to the hard one (thousands of sockets).
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// The daemon's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Whether the daemon has closed its end of `s` (without reading what it sent).
fn closed_by_peer(s: &UnixStream) -> bool {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    unsafe { libc::poll(&mut p, 1, 0) };
    p.revents & (libc::POLLHUP | libc::POLLRDHUP) != 0
}

/// Opens a connection that floods requests and never reads an answer: it writes until
/// its own send buffer is full.
fn never_reading(socket: &std::path::Path, flood: &[u8]) -> UnixStream {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_nonblocking(true).unwrap();
    let mut off = 0;
    while off < flood.len() {
        match s.write(&flood[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("flood: {e}"),
        }
    }
    s
}

/// Pings and lists on a new connection; returns how long the answers took.
fn ping_and_list(d: &TestDaemon) -> Duration {
    let t = Instant::now();
    let mut c = Client::connect(&d.socket()).expect("connect");
    let pong = c.call(&Request::Ping {}).expect("ping answered");
    assert_eq!(pong["pong"], true);
    let list = c.call(&Request::list()).expect("list answered");
    assert!(!list["models"].as_array().unwrap().is_empty());
    t.elapsed()
}

#[test]
fn client_is_answered_while_thousands_idle_and_hundreds_never_read() {
    let nofile = raise_nofile();
    assert!(
        nofile >= 2600,
        "this test needs 2600 open files (hard limit {nofile})"
    );
    let d = TestDaemon::quick();
    for i in 0..5 {
        write(
            &d.inbox().join(format!("model-{i}.pt")),
            &bytes(i, 1000 + i as usize),
        );
    }
    wait_until(Duration::from_secs(30), "5 models", || {
        d.call(&Request::list())
            .is_ok_and(|v| v["models"].as_array().unwrap().len() == 5)
    });
    let quiet = ping_and_list(&d);
    let rss_before = rss_kib(d.pid());

    let idle: Vec<UnixStream> = (0..2000)
        .map(|_| UnixStream::connect(d.socket()).expect("connect idle"))
        .collect();
    let flood = b"{\"op\":\"list\"}\n".repeat(20_000);
    let hogs: Vec<UnixStream> = (0..300)
        .map(|_| never_reading(&d.socket(), &flood))
        .collect();

    let busy = ping_and_list(&d);
    let rss_during = rss_kib(d.pid());
    eprintln!(
        "ping+list: {:.1} ms alone, {:.1} ms with 2000 idle and 300 never-reading connections; \
         daemon RSS {} KiB before, {} KiB with them",
        quiet.as_secs_f64() * 1e3,
        busy.as_secs_f64() * 1e3,
        rss_before,
        rss_during
    );
    // A liveness bound, not a performance goal (benches/bench.rs `connections` measures).
    assert!(
        busy < Duration::from_secs(5),
        "answered only after {busy:?}"
    );
    // Connections cost little: 2300 of them (and their unsent answers) stay within 64 MiB.
    assert!(
        rss_during < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_during} KiB"
    );

    // The idle connections were not dropped to make room: they still work.
    for s in idle.iter().step_by(400) {
        let mut s = s.try_clone().unwrap();
        s.write_all(b"{\"op\":\"ping\"}\n").unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        assert!(line.contains("\"pong\":true"), "{line}");
    }

    // Answers left unread close the connection after the write timeout: the daemon does
    // not hold them forever.
    wait_until(
        Duration::from_secs(60),
        "the never-reading connections to be closed",
        || hogs.iter().all(closed_by_peer),
    );
    assert!(idle.iter().step_by(100).all(|s| !closed_by_peer(s)));
    ping_and_list(&d);
}

#[test]
fn at_the_connection_limit_the_longest_idle_connection_makes_room_and_is_told_why() {
    raise_nofile();
    // An open-files limit of 300 leaves the daemon room for 150 connections.
    let mut d = TestDaemon::new("settle: 300ms\n");
    let child = unsafe {
        Command::new(common::BIN)
            .arg("serve")
            .arg("--root")
            .arg(d.root.path())
            .env("RUST_LOG", "modelreg=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(d.log_path())
                    .unwrap(),
            )
            .pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 300,
                    rlim_max: 300,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
            .spawn()
            .expect("spawn modelreg")
    };
    d.adopt(child);
    d.wait_ready();
    write(&d.inbox().join("m.pt"), b"weights");
    d.wait_versions("m", 1);

    let oldest = UnixStream::connect(d.socket()).unwrap();
    oldest
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let others: Vec<UnixStream> = (0..400)
        .map(|_| UnixStream::connect(d.socket()).expect("connect"))
        .collect();
    // Every new client is still answered (an idle one made room for it).
    ping_and_list(&d);
    let mut line = String::new();
    BufReader::new(&oldest).read_line(&mut line).unwrap();
    assert!(line.contains("\"code\":\"busy\""), "{line}");
    assert!(line.contains("longest idle"), "{line}");
    drop(others);
    assert!(
        d.log().contains("serving up to 150 connections"),
        "{}",
        d.log()
    );
}

#[test]
fn get_and_wait_on_a_folder_of_many_files_answer_from_the_blocking_pool() {
    let d = TestDaemon::quick();
    let stage = d.root.path().join("stage");
    std::fs::create_dir_all(stage.join("many")).unwrap();
    for i in 0..20 {
        write(
            &stage.join("many").join(format!("part-{i:02}.bin")),
            &bytes(i, 100),
        );
    }
    std::fs::rename(stage.join("many"), d.inbox().join("many")).unwrap();
    let answer = d
        .client()
        .call(&Request::Wait {
            name: "many".into(),
            entry: "many".into(),
            timeout_ms: Some(30_000),
        })
        .expect("wait answered");
    assert_eq!(answer["version"]["version"], "v1");
    let v = d.get("many", "latest").expect("get answered");
    assert_eq!(v.files.len(), 20);
    assert!(
        v.files
            .iter()
            .all(|f| std::path::Path::new(&f.path).exists())
    );
}
