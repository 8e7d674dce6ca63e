//! `register`: a complete file handed over as a descriptor, checked here, copied by the
//! registrar, answered like `wait`.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::sync::oneshot;

use super::Context;
use super::answers::version_info_in;
use super::fds::LineFds;
use crate::ingest::RegistrarMsg;
use crate::messages::Handover;
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
    Ok(meta)
}

/// Answers `register` (the request must be one) for the descriptor `fd`.
pub(super) async fn register(
    req: Request,
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
    if let Err(reason) =
        crate::names::check_component(&filename).and_then(|()| match filename.starts_with('.') {
            true => Err("starts with a dot".to_string()),
            false => Ok(()),
        })
    {
        return Response::err(
            ErrorCode::InvalidName,
            format!("invalid filename {filename:?}: it {reason}"),
        );
    }
    let sidecar = if metrics.is_some() || metadata.is_some() {
        let shown = format!("the metrics of register {name}");
        match crate::sidecar::from_request(&shown, metrics.as_ref(), metadata.as_ref()) {
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
    use std::os::unix::fs::MetadataExt;
    let (stat, mode) = (crate::inbox::FileStat::of(&meta), meta.mode() & 0o7777);
    // A copy that cannot fit would fail part-way after filling the disk others share.
    let store = ctx.config().store.clone();
    if let Ok(free) = crate::fsutil::free_bytes(&store)
        && stat.size > free
    {
        use crate::status::human_bytes;
        return Response::err(
            ErrorCode::TooLarge,
            format!(
                "{filename} is {} ({} bytes) but the store's file system ({}) has only {} ({free} bytes) free; nothing was copied",
                human_bytes(stat.size),
                stat.size,
                store.display(),
                human_bytes(free)
            ),
        );
    }
    tracing::debug!(model = %name, uid = ?peer_uid, "hand-over of {filename}");
    let (tx, rx) = oneshot::channel();
    let msg = RegistrarMsg::Handover(Box::new(Handover {
        name: name.clone(),
        filename,
        file,
        stat,
        mode,
        sidecar,
        reply: tx,
    }));
    if ctx.registrar.send(msg).is_err() {
        return Response::err(ErrorCode::Internal, "the daemon is shutting down");
    }
    let number = match rx.await {
        Ok(Ok(Ok(ChangeAnswer::Registered { number, created }))) => (number, created),
        Ok(Ok(Ok(_))) => return Response::err(ErrorCode::Internal, "unexpected answer"),
        Ok(Ok(Err(e))) => return e.into(),
        Ok(Err(body)) => return Response::err(body.code, body.message),
        Err(_) => {
            return Response::err(
                ErrorCode::Internal,
                "the hand-over was not confirmed (the daemon is shutting down?); nothing kept",
            );
        }
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
