//! Several "hosts" on one machine for a test: network namespaces on a private subnet, joined by a bridge in a switch namespace, removed on drop.
//!
//! Each [`Net`] gets a /24 of its own in 10.0.0.0/8 (from the pid and a counter, checked
//! unused), a switch namespace holding a bridge, and one namespace per named host with
//! one veth (`eth0`, address `10.a.b.N`) whose other end is a port of the bridge, and
//! loopback up. Why a bridge in a namespace of its own rather than veth pairs into a hub
//! namespace: the hosts share one layer-2 subnet like machines on a LAN, so no routes or
//! forwarding are needed, and nothing of it is in the machine's own namespace (its
//! firewall, routes and services never see the traffic, and vice versa). A host is cut
//! off by setting its switch port down, like pulling its cable ([`Net::cut`]).
//!
//! Running things inside a host: [`Net::command`] prefixes `ip netns exec NAME` (servers:
//! PostgreSQL, later Garage and the daemon); [`Net::spawn_in`] runs a closure on a thread
//! that entered the namespace with setns(2) (a namespace is per thread, and threads it
//! starts inherit it); [`Net::spawn_async_in`] runs a current-thread tokio runtime there,
//! e.g. for the catalog layer.
//!
//! Names are `mr<pid>x<counter>-<name>` (namespaces are files in /run/netns). Drop deletes
//! the namespaces (which deletes their veths and the bridge), a panicking test too; the
//! leftovers of a killed run (same prefix, pid no longer alive), and the servers still
//! running in them, are deleted by the next [`Net::new`]. Needs root and iproute2 (`ip`).

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

/// One host of a [`Net`].
#[derive(Debug, Clone)]
pub struct Host {
    /// The name the test gave it (`db`, `h1`).
    pub name: String,
    /// Its namespace (`mr1234x0-db`).
    pub ns: String,
    /// Its address on the test's subnet.
    pub addr: Ipv4Addr,
    /// Its port on the switch (the bridge side of its veth), in the switch namespace.
    port: String,
}

/// The test bed (see the module docs).
pub struct Net {
    switch: String,
    subnet: [u8; 3],
    hosts: Vec<Host>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);
static CLEAN: Once = Once::new();

impl Net {
    /// A switch and one host per name, addresses `.1`, `.2`, ... in the order given.
    /// Panics with what to install when `ip` is missing or we are not root.
    pub fn new(names: &[&str]) -> Net {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "network namespaces need root (these tests run as root in CI)"
        );
        assert!(
            Command::new("ip").arg("-V").output().is_ok(),
            "`ip` not found: these tests need iproute2 (apt-get install iproute2; .ci/run installs it)"
        );
        CLEAN.call_once(clean_leftovers);
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("mr{pid}x{n}");
        let mut net = Net {
            switch: format!("{prefix}-sw"),
            subnet: free_subnet(pid, n),
            hosts: Vec::new(),
        };
        // Built step by step into `net`, so that a failure half-way is cleaned by Drop.
        ip(&["netns", "add", &net.switch]);
        ipn(&net.switch, &["link", "add", "br0", "type", "bridge"]);
        ipn(&net.switch, &["link", "set", "br0", "up"]);
        for (i, name) in names.iter().enumerate() {
            let [a, b, c] = net.subnet;
            let host = Host {
                name: name.to_string(),
                ns: format!("{prefix}-{name}"),
                addr: Ipv4Addr::new(a, b, c, i as u8 + 1),
                port: format!("p{}", i + 1),
            };
            ip(&["netns", "add", &host.ns]);
            net.hosts.push(host.clone());
            // Both ends created straight in their namespaces: `eth0` never exists in ours.
            ip(&[
                "link",
                "add",
                "eth0",
                "netns",
                &host.ns,
                "type",
                "veth",
                "peer",
                "name",
                &host.port,
                "netns",
                &net.switch,
            ]);
            ipn(&net.switch, &["link", "set", &host.port, "master", "br0"]);
            ipn(&net.switch, &["link", "set", &host.port, "up"]);
            ipn(&host.ns, &["link", "set", "lo", "up"]);
            let cidr = format!("{}/24", host.addr);
            ipn(&host.ns, &["addr", "add", &cidr, "dev", "eth0"]);
            ipn(&host.ns, &["link", "set", "eth0", "up"]);
        }
        net
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in this Net"))
    }

    /// The test's subnet, `10.a.b.0/24`.
    pub fn subnet(&self) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.0/24")
    }

    /// `program` to run inside host `name` (`ip netns exec NS program`).
    pub fn command(&self, name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host(name).ns]).arg(program);
        c
    }

    /// Runs `f` on a new thread inside host `name`'s namespace (setns(2) on that thread
    /// only; threads it starts inherit the namespace).
    pub fn spawn_in<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let ns = self.host(name).ns.clone();
        std::thread::Builder::new()
            .name(format!("host {name}"))
            .spawn(move || {
                enter(&ns);
                f()
            })
            .unwrap()
    }

    /// Runs the future `f` makes on a current-thread tokio runtime, on a thread inside
    /// host `name` (see [`Net::spawn_in`]): its sockets are that host's. `f` makes the
    /// future on that thread, so the future need not be `Send`.
    pub fn spawn_async_in<T, Fut>(
        &self,
        name: &str,
        f: impl FnOnce() -> Fut + Send + 'static,
    ) -> std::thread::JoinHandle<T>
    where
        T: Send + 'static,
        Fut: Future<Output = T>,
    {
        self.spawn_in(name, move || block_on(f()))
    }

    /// Cuts host `name` off the switch (its port down: no packet in or out, like a pulled
    /// cable; its own address and sockets stay).
    pub fn cut(&self, name: &str) {
        ipn(
            &self.switch,
            &["link", "set", &self.host(name).port, "down"],
        );
    }

    /// Connects host `name` again after [`Net::cut`].
    pub fn restore(&self, name: &str) {
        ipn(&self.switch, &["link", "set", &self.host(name).port, "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its devices: the veths (both ends) and the bridge.
        for ns in self
            .hosts
            .iter()
            .map(|h| h.ns.as_str())
            .chain([self.switch.as_str()])
        {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` to completion on a new current-thread tokio runtime on this thread.
pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Enters namespace `ns` on the calling thread.
fn enter(ns: &str) {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

/// A /24 nobody here uses: from the pid and counter, the next one along when taken (by
/// the machine's own addresses or routes, or another test's namespace). Not strictly
/// needed, since each Net is isolated, but it keeps a look at `ip netns` unambiguous and
/// never shadows a subnet the machine itself is on.
fn free_subnet(pid: u32, n: u32) -> [u8; 3] {
    let mut used = run(Command::new("ip").args(["-4", "-o", "addr"]));
    used.push_str(&run(Command::new("ip").args(["-4", "route"])));
    for ns in our_namespaces() {
        used.push_str(&run(
            Command::new("ip").args(["-n", &ns, "-4", "-o", "addr"])
        ));
    }
    let mut k = pid.wrapping_mul(97).wrapping_add(n.wrapping_mul(7919));
    loop {
        // 10.a.b.0/24 with a in 100..=227: away from the low 10.0.x.x most setups use.
        let a = 100 + (k >> 8) % 128;
        let b = k & 0xff;
        // Crude but safe: a false match (110.a.b.) only moves us along one.
        if !used.contains(&format!("10.{a}.{b}.")) {
            return [10, a as u8, b as u8];
        }
        k = k.wrapping_add(1);
    }
}

/// The namespaces named like ours (`mr<pid>x<n>-...`).
fn our_namespaces() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| owner_pid(n).is_some())
        .collect()
}

/// The pid in a name `mr<pid>x<n>-<host>`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("mr")?;
    let (pid, rest) = rest.split_once('x')?;
    let (n, _) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Deletes namespaces left by a killed test run (its pid no longer alive), and ends the
/// processes still running in them.
fn clean_leftovers() {
    for ns in our_namespaces() {
        let pid = owner_pid(&ns).expect("filtered");
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("netns: deleting {ns}, left by a test run that was killed (pid {pid})");
            // Its servers (a PostgreSQL) outlived the test: they go with the namespace.
            for p in run(Command::new("ip").args(["netns", "pids", &ns])).split_whitespace() {
                if let Ok(p) = p.parse::<i32>() {
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

fn ip(args: &[&str]) {
    check(Command::new("ip").args(args).output(), args);
}

fn ipn(ns: &str, args: &[&str]) {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all);
}

fn check(out: std::io::Result<Output>, args: &[&str]) {
    let out = out.unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn run(c: &mut Command) -> String {
    c.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
