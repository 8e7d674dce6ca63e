//! The progress bar `modelreg add --wait` draws on a terminal while the daemon copies
//! the artifact into the store: bytes done/total, rate and ETA, read from `status`'s
//! waiting entry for the model, as the Python client's `register` does.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use modelreg::client::Client;
use modelreg::display::escape_for_terminal as esc;
use modelreg::protocol::Waiting;
use modelreg::status::human_bytes;

/// How often `status` is asked while the bar is shown: often enough that a copy of a
/// second or two shows several frames; a status request costs the daemon microseconds.
const POLL: Duration = Duration::from_millis(100);
/// Cells of the bar itself, between the brackets.
const BAR_CELLS: usize = 30;

/// True when stderr is a terminal: only then is anything drawn (a pipe or a log file
/// gets no carriage returns).
pub(super) fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// One frame of the bar for `w`, without the leading `\r`:
/// `resnet [#########.....] 300.0 MiB/1.0 GiB 205.3 MiB/s ETA 4s`. `None` before the
/// daemon knows the total (settling, or a state without a copy).
pub(super) fn bar_line(w: &Waiting) -> Option<String> {
    let total = w.bytes_total?;
    let done = w.bytes_done.unwrap_or(0).min(total);
    let filled = if total == 0 {
        BAR_CELLS
    } else {
        // u128: done * cells cannot overflow for any file size.
        (u128::from(done) * BAR_CELLS as u128 / u128::from(total)) as usize
    };
    let rate = w
        .rate_bytes_per_sec
        .filter(|r| r.is_finite() && *r > 0.0)
        .map(|r| format!(" {}/s", human_bytes(r as u64)))
        .unwrap_or_default();
    let eta = w
        .eta_secs
        .filter(|e| e.is_finite() && *e >= 0.0)
        .map(|e| format!(" ETA {:.0}s", e.ceil()))
        .unwrap_or_default();
    Some(format!(
        "{} [{}{}] {}/{}{rate}{eta}",
        esc(&w.name),
        "#".repeat(filled),
        ".".repeat(BAR_CELLS - filled),
        human_bytes(done),
        human_bytes(total)
    ))
}

/// A bar drawn on stderr by a thread with its own connection, until [`Bar::finish`].
pub(super) struct Bar {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Bar {
    /// Starts drawing the registration of `name` (the daemon at `socket`).
    pub(super) fn start(socket: &Path, name: &str) -> Bar {
        let (stop, stopped) = mpsc::channel();
        let (socket, name) = (socket.to_path_buf(), name.to_string());
        let thread = std::thread::spawn(move || draw(&socket, &name, &stopped));
        Bar { stop, thread }
    }

    /// Stops drawing and ends the bar's line, so what follows starts on its own line.
    pub(super) fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn draw(socket: &Path, name: &str, stopped: &mpsc::Receiver<()>) {
    // The bar is a nicety: without a connection there is simply none.
    let Ok(mut c) = Client::connect(socket) else {
        return;
    };
    let mut widest: usize = 0;
    // Until `finish` sends (or drops the sender): a timeout is the next poll.
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(POLL) {
        let Ok(status) = c.status() else { break };
        let Some(line) = status
            .waiting
            .iter()
            .find(|w| w.name == name)
            .and_then(bar_line)
        else {
            continue;
        };
        // Spaces over the rest of a longer earlier frame (a rate that lost a digit).
        let cells = modelreg::display::width(&line);
        let blank = " ".repeat(widest.saturating_sub(cells));
        widest = widest.max(cells);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}{blank}");
        let _ = err.flush();
    }
    if widest > 0 {
        let _ = writeln!(std::io::stderr());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(done: Option<u64>, total: Option<u64>) -> Waiting {
        Waiting {
            name: "resnet\u{1b}[2J".into(),
            entries: vec!["resnet.pt".into()],
            state: "registering".into(),
            since_secs: 2.0,
            reason: None,
            bytes_done: done,
            bytes_total: total,
            rate_bytes_per_sec: Some(200.0 * 1024.0 * 1024.0),
            eta_secs: Some(3.2),
        }
    }

    #[test]
    fn bar_shows_bytes_rate_and_eta() {
        let line = bar_line(&waiting(Some(512 << 20), Some(1 << 30))).unwrap();
        assert_eq!(
            line,
            "resnet\\u{1b}[2J [###############...............] 512.0 MiB/1.0 GiB 200.0 MiB/s ETA 4s"
        );
    }

    #[test]
    fn no_bar_before_the_total_is_known_and_a_full_bar_at_the_end() {
        assert_eq!(bar_line(&waiting(None, None)), None);
        let line = bar_line(&waiting(Some(10), Some(10))).unwrap();
        assert!(
            line.contains(&format!("[{}]", "#".repeat(BAR_CELLS))),
            "{line}"
        );
        let line = bar_line(&waiting(None, Some(0))).unwrap();
        assert!(
            line.contains(&format!("[{}]", "#".repeat(BAR_CELLS))),
            "{line}"
        );
    }
}
