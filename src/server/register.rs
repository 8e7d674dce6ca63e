//! `register`: a complete file handed over as a descriptor, checked here, copied by the
//! registrar, answered like `wait`.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use tokio::sync::oneshot;

use super::Context;
use super::answers::version_info_in;
use super::fds::LineFds;
use crate::ingest::RegistrarMsg;
use crate::messages::{HandedFiles, Handover};
use crate::protocol::{ChangeAnswer, ErrorCode, Request, Response, Waited};
use crate::registry::RegistryError;

/// The answer refusing a request for the descriptors it came with: `register` needs
/// exactly one, every other request none. `None` when they fit. (Those not used are
/// closed by the caller.)
pub(super) fn refuse_fds(req: &Request, fds: &LineFds) -> Option<Response> {
    let n = fds.fds.len();
    let bad = |m: String| Some(Response::err(ErrorCode::BadRequest, m));
    match req {
        Request::Register { .. } if fds.truncated || n > 1 => bad(format!(
            "register carries exactly one file descriptor; {} were sent (all closed)",
            if fds.truncated {
                format!("more than {n}")
            } else {
                n.to_string()
            }
        )),
        Request::Register { .. } if n == 0 => bad(NO_DESCRIPTOR.to_string()),
        Request::Register { .. } => None,
        _ if n > 0 || fds.truncated => bad(format!(
            "{} carries no file descriptor; the one(s) sent with it were closed",
            req.op()
        )),
        _ => None,
    }
}

/// Who is on the other end of a connection, from the kernel (SO_PEERCRED at connect).
#[derive(Debug, Clone, Copy)]
pub(super) struct Peer {
    /// Its effective uid.
    pub uid: Option<u32>,
    /// Its effective gid.
    pub gid: Option<u32>,
    /// The connection's socket, to ask for the peer's supplementary groups when needed
    /// (valid while the connection is handled).
    sock: RawFd,
}

impl Peer {
    /// The peer of `stream`.
    pub fn of(stream: &tokio::net::UnixStream) -> Peer {
        let cred = stream.peer_cred().ok();
        Peer {
            uid: cred.map(|c| c.uid()),
            gid: cred.map(|c| c.gid()),
            sock: stream.as_raw_fd(),
        }
    }

    /// Its supplementary groups as they were at connect (SO_PEERGROUPS); empty when the
    /// kernel cannot say.
    fn groups(&self) -> Vec<u32> {
        peer_groups(self.sock)
    }
}

/// SO_PEERGROUPS (Linux 4.13): the asm-generic value, which the libc crate does not
/// export for every target; the architectures that number it otherwise fall back to the
/// primary group alone.
#[cfg(not(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
fn peer_groups(sock: RawFd) -> Vec<u32> {
    const SO_PEERGROUPS: libc::c_int = 59;
    let size = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size) as libc::socklen_t;
        // SAFETY: the buffer is valid for `len` bytes; the kernel writes at most that.
        let rc = unsafe {
            libc::getsockopt(
                sock,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / size;
        if rc == 0 {
            groups.truncate(n);
            return groups;
        }
        // ERANGE: `len` now says how much is needed.
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) && n > groups.len()
        {
            groups.resize(n, 0);
            continue;
        }
        return Vec::new();
    }
}

#[cfg(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
fn peer_groups(_sock: RawFd) -> Vec<u32> {
    Vec::new()
}

/// Whether the user `uid` in groups `gids` may create entries in the folder `dir` (write
/// and search permission by its mode bits; ACLs are not read).
fn may_write_dir(uid: u32, gids: &[u32], dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(dir) else {
        return false;
    };
    let bits = if uid == m.uid() {
        m.mode() >> 6
    } else if gids.contains(&m.gid()) {
        m.mode() >> 3
    } else {
        m.mode()
    };
    bits & 0o3 == 0o3
}

/// The refusal of a `register` by a peer who may neither change the registry (the
/// daemon's user, root) nor write the inbox; `None` when it may hand a file over. A user
/// who may drop a file into the inbox gets the same version that way: handing it over
/// is the same power, no more.
pub(super) fn refuse_peer(req: &Request, peer: &Peer, ctx: &Context) -> Option<Response> {
    if !matches!(req, Request::Register { .. }) || super::may_change(peer.uid) {
        return None;
    }
    let inbox = ctx.config().inbox.clone();
    let may_write = |uid| {
        let mut gids = peer.groups();
        gids.extend(peer.gid);
        may_write_dir(uid, &gids, &inbox)
    };
    if peer.uid.is_some_and(may_write) {
        return None;
    }
    let who = match peer.uid {
        Some(uid) => format!("uid {uid} ({})", crate::users::user_name(uid)),
        None => "a peer whose uid the kernel did not give".to_string(),
    };
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    let group = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&inbox)
            .map(|m| format!(" (group {})", crate::users::group_name(m.gid())))
            .unwrap_or_default()
    };
    Some(Response::err(
        ErrorCode::PermissionDenied,
        format!(
            "register adds versions: only uid {own} (the daemon's user), root, or a user who may write the inbox {}{group} may; {who} may not, so nothing was registered",
            inbox.display(),
        ),
    ))
}

/// The answer of a hand-over the daemon stopped before taking.
const STOPPING: &str = "the daemon is stopping: the hand-over was not taken and nothing of it was kept; register again once the daemon is back";

/// The refusal of a `register` without a descriptor.
pub(super) const NO_DESCRIPTOR: &str = "register needs the file's open descriptor sent with the request line (SCM_RIGHTS; Python: socket.send_fds); none came. To register by path, place the file in the inbox";

/// The state of the file behind a descriptor, or why it cannot be copied from: not a
/// regular file, or not open for reading.
fn usable(file: &File) -> Result<std::fs::Metadata, String> {
    let meta = file.metadata().map_err(|e| format!("fstat failed: {e}"))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if ft.is_dir() {
            "a folder"
        } else if ft.is_fifo() {
            "a FIFO (pipe)"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else {
            "not a file"
        };
        return Err(format!(
            "is {what}, not a regular file; only a complete regular file can be handed over"
        ));
    }
    // SAFETY: F_GETFL only reads the descriptor's flags.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(format!("fcntl failed: {}", std::io::Error::last_os_error()));
    }
    if flags & libc::O_PATH != 0 || flags & libc::O_ACCMODE == libc::O_WRONLY {
        return Err("is not open for reading (open it read-only)".into());
    }
    if let Some(fs) = pseudo_file_system(file) {
        return Err(format!(
            "is a file of {fs}, whose size ({} bytes as reported) is not its content; copy it to a regular file first (cat FILE > copy) and add that",
            meta.len()
        ));
    }
    Ok(meta)
}

/// The pseudo-file system `file` lies on (/sys, /proc, ...), whose files report a size
/// that is not what reading them gives (a sysfs attribute says 4096): a copy checked
/// against that size would read as "changed while copying".
fn pseudo_file_system(file: &File) -> Option<&'static str> {
    // SAFETY: fstatfs only writes the struct it is given.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's and the constants' types differ between targets
    let magic = st.f_type as i64;
    #[allow(clippy::unnecessary_cast)]
    let known = [
        (libc::SYSFS_MAGIC as i64, "sysfs (/sys)"),
        (libc::PROC_SUPER_MAGIC as i64, "procfs (/proc)"),
        (libc::DEBUGFS_MAGIC as i64, "debugfs"),
        (libc::TRACEFS_MAGIC as i64, "tracefs"),
        (libc::SECURITYFS_MAGIC as i64, "securityfs"),
        (libc::CGROUP_SUPER_MAGIC as i64, "cgroupfs"),
        (libc::CGROUP2_SUPER_MAGIC as i64, "cgroup2fs"),
    ];
    known
        .into_iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, name)| name)
}

/// The JSON text of a `register` line's `metrics` and `metadata`, as sent.
#[derive(serde::Deserialize)]
struct RawMaps<'a> {
    #[serde(borrow, default)]
    metrics: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    metadata: Option<&'a serde_json::value::RawValue>,
}

/// Refuses a hand-over's file name that could not be one file of a version: a path, a
/// control character, a hidden name. The HTTP upload asks before it receives the body.
pub fn check_filename(filename: &str) -> Result<(), crate::protocol::ErrorBody> {
    crate::names::check_component(filename)
        .and_then(|()| match filename.starts_with('.') {
            true => Err("starts with a dot".to_string()),
            false => Ok(()),
        })
        .map_err(|reason| crate::protocol::ErrorBody {
            code: ErrorCode::InvalidName,
            message: format!("invalid filename {filename:?}: it {reason}"),
        })
}

/// Answers `register` (the request must be one, read from `line`) for the descriptor
/// `fd`.
pub async fn register(
    req: Request,
    line: &[u8],
    fd: OwnedFd,
    ctx: &Context,
    peer_uid: Option<u32>,
) -> Response {
    let Request::Register {
        name,
        filename,
        metrics,
        metadata,
    } = req
    else {
        return Response::err(ErrorCode::Internal, "not a register request");
    };
    if let Err(e) = RegistryError::check_model_name(&name) {
        return e.into();
    }
    if let Err(e) = check_filename(&filename) {
        return Response::err(e.code, e.message);
    }
    let sidecar = if metrics.is_some() || metadata.is_some() {
        let shown = format!("the metrics of register {name}");
        // Checked as sent, by the sidecar's own parser: a parsed value has already lost
        // what it would refuse (an integer beyond 64 bits became a float).
        let raw = match serde_json::from_slice::<RawMaps>(line) {
            Ok(r) => r,
            Err(e) => return Response::err(ErrorCode::BadRequest, format!("{shown}: {e}")),
        };
        let text = |r: Option<&serde_json::value::RawValue>| r.map(|r| r.get().to_string());
        let (m, md) = (text(raw.metrics), text(raw.metadata));
        match crate::sidecar::from_request(&shown, m.as_deref(), md.as_deref()) {
            Ok(s) => Some(s),
            Err(e) => {
                return Response::err(
                    ErrorCode::Blocked,
                    format!("{shown}: {}; nothing was registered", e.reason),
                );
            }
        }
    } else {
        None
    };
    let file = File::from(fd);
    // The file as handed over: the copy must find it unchanged after it.
    let meta = match usable(&file) {
        Ok(m) => m,
        Err(why) => {
            return Response::err(
                ErrorCode::UnusableFile,
                format!("the descriptor handed over for {filename}: {why}"),
            );
        }
    };
    // A file a writer still has open would be copied as far as it is written, and the
    // rest lost: refused, as the inbox waits for such a file (the same lease probe).
    // Where the kernel cannot tell (the daemon neither root nor the file's owner), the
    // client has asked it already (`modelreg add`, the Python client).
    // A descriptor the client opened for reading and writing is its own opening, not
    // another writer (the daemon only reads): `open_for_writing` asks past it.
    if crate::fsutil::open_for_writing(&file) == Some(true) {
        let own = match crate::fsutil::descriptor_writable(&file) {
            true => {
                " (the descriptor handed over is open for reading and writing, which is accepted when it is the file's only opening; another one has the file open too)"
            }
            false => "",
        };
        return Response::err(
            ErrorCode::SourceChanged,
            format!(
                "the file handed over as {filename} is still open for writing by another process{own}; add it once it is closed (nothing was registered)"
            ),
        );
    }
    use std::os::unix::fs::MetadataExt;
    let (stat, mode) = (crate::inbox::FileStat::of(&meta), meta.mode() & 0o7777);
    // As in the inbox, where an empty file waits for its bytes: never an empty version.
    if stat.size == 0 {
        return Response::err(
            ErrorCode::UnusableFile,
            format!(
                "the file handed over as {filename} is empty (0 bytes): an empty file never becomes a version; nothing was registered"
            ),
        );
    }
    tracing::debug!(model = %name, uid = ?peer_uid, "hand-over of {filename}");
    let files = HandedFiles::File {
        filename,
        file,
        stat,
        mode,
    };
    hand_over(ctx, name, files, sidecar).await
}

/// Hands `files` over to the registrar as the next version of `name` (checked: a name
/// the registry takes, readable regular files) and answers like `wait`: the version
/// once durable, or why nothing was kept.
pub async fn hand_over(
    ctx: &Context,
    name: String,
    files: HandedFiles,
    sidecar: Option<crate::sidecar::Sidecar>,
) -> Response {
    // A copy that cannot fit would fail part-way after filling the disk others share.
    let store = ctx.config().store.clone();
    let size = files.size();
    let shown = match &files {
        HandedFiles::File { filename, .. } => filename.clone(),
        HandedFiles::Folder { .. } => format!("the folder {name}"),
    };
    if let Ok(free) = crate::fsutil::free_bytes(&store)
        && size > free
    {
        use crate::status::human_bytes;
        return Response::err(
            ErrorCode::TooLarge,
            format!(
                "{shown} is {} ({size} bytes) but the store's file system ({}) has only {} ({free} bytes) free; nothing was copied",
                human_bytes(size),
                store.display(),
                human_bytes(free)
            ),
        );
    }
    let (tx, rx) = oneshot::channel();
    let msg = RegistrarMsg::Handover(Box::new(Handover {
        name: name.clone(),
        files,
        sidecar,
        reply: tx,
    }));
    if ctx.registrar.send(msg).is_err() {
        return Response::err(ErrorCode::ShuttingDown, STOPPING);
    }
    let number = match rx.await {
        Ok(Ok(Ok(ChangeAnswer::Registered { number, created }))) => (number, created),
        Ok(Ok(Ok(_))) => return Response::err(ErrorCode::Internal, "unexpected answer"),
        Ok(Ok(Err(e))) => return e.into(),
        Ok(Err(body)) => return Response::err(body.code, body.message),
        // The registrar ended without answering: only at shutdown.
        Err(_) => return Response::err(ErrorCode::ShuttingDown, STOPPING),
    };
    let (catalog, cfg) = (ctx.shared.catalog(), ctx.config());
    let (number, created) = number;
    match catalog
        .models
        .get(&name)
        .and_then(|m| Some((m, m.find(number)?)))
    {
        Some((m, v)) => Response::answer(&Waited {
            version: version_info_in(&cfg, &name, v, m),
            created,
        }),
        None => Response::err(
            ErrorCode::Internal,
            format!("{name} v{number} was registered but is not in the published catalog"),
        ),
    }
}
