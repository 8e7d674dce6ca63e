//! `modelreg events`: the last events (the last matching ones when filtered), or from a seq, then followed;
//! on the socket, or over `--url` as Server-Sent Events.

use modelreg::client::{Client, ClientError};
use modelreg::display::escape_for_terminal as esc;

/// How many events `modelreg events` shows without --since.
const EVENTS_SHOWN: u64 = 20;

/// `modelreg events`: the retained events (from --since, else the last
/// [`EVENTS_SHOWN`] that pass the filters), then with --follow every new one.
pub(super) fn events(
    c: &mut Client,
    follow: bool,
    since: Option<&str>,
    models: &[String],
    kinds: &[String],
    json: bool,
) -> Result<(), ClientError> {
    use modelreg::client::StreamLine;
    use modelreg::protocol::{Request, Since};
    let print = |raw: &str, e: &modelreg::events::Event| {
        if json {
            outln!("{}", modelreg::display::escape_json_for_terminal(raw));
        } else {
            outln!("{}", esc(&e.line()));
        }
    };
    // The daemon's own parser: the CLI refuses what the socket and HTTP refuse, alike.
    let mut since = since.map(Since::parse).transpose().map_err(|message| {
        ClientError::Remote(modelreg::protocol::ErrorBody {
            code: modelreg::protocol::ErrorCode::BadRequest,
            message,
        })
    })?;
    let filtered = !models.is_empty() || !kinds.is_empty();
    if since.is_none() && filtered {
        // The last matching ones, not the matching ones among the last: read back from
        // the end in growing windows until enough match or the log's start is reached.
        let (shown, last) = last_matching(c, models, kinds)?;
        for (raw, e) in &shown {
            print(raw, e);
        }
        if !follow {
            return Ok(());
        }
        since = Some(Since::Seq(last + 1));
        if let Some(path) = c.socket_path().map(std::path::Path::to_path_buf) {
            *c = Client::connect(&path)?;
        }
    }
    let req = Request::Events {
        last: since.is_none().then_some(EVENTS_SHOWN),
        since,
        models: models.to_vec(),
        kinds: kinds.to_vec(),
        follow,
        heartbeat_ms: None,
    };
    c.events(&req, |raw, line| {
        if let StreamLine::Event(e) = line {
            print(raw, &e);
        }
        true
    })?;
    Ok(())
}

/// The last [`EVENTS_SHOWN`] events passing the filters (raw line and event), and the
/// log's last seq when they were read. Each window is four times the one before, so
/// the work is bounded by a few times the log read once.
fn last_matching(
    c: &mut Client,
    models: &[String],
    kinds: &[String],
) -> Result<(Vec<(String, modelreg::events::Event)>, u64), ClientError> {
    use modelreg::client::StreamLine;
    use modelreg::protocol::Request;
    let mut window = EVENTS_SHOWN * 8;
    loop {
        let mut got = Vec::new();
        let req = Request::Events {
            since: None,
            last: Some(window),
            models: models.to_vec(),
            kinds: kinds.to_vec(),
            follow: false,
            heartbeat_ms: None,
        };
        let head = c.events(&req, |raw, line| {
            if let StreamLine::Event(e) = line {
                got.push((raw.to_string(), *e));
            }
            true
        })?;
        let at = |k: &str| head.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let (first, from, last) = (at("first"), at("from"), at("last"));
        // A stream takes one request: the next window needs a new connection.
        if let Some(path) = c.socket_path().map(std::path::Path::to_path_buf) {
            *c = Client::connect(&path)?;
        }
        if got.len() as u64 >= EVENTS_SHOWN || from <= first || window > last {
            let skip = got.len().saturating_sub(EVENTS_SHOWN as usize);
            return Ok((got.split_off(skip), last));
        }
        window = window.saturating_mul(4);
    }
}
