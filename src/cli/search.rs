//! `list` and `versions` with a search (`--where`, `--tag`, `--sort`, `--limit`,
//! `--cursor`): checked here before anything is asked, so that a mistyped expression is
//! shown with its caret even without a daemon; then asked as one request per page.

use modelreg::client::{Client, ClientError};
use modelreg::protocol::{ModelList, Request, SearchFields, VersionList};
use modelreg::query::{Search, SearchArgs};

use super::render::{print_list, print_versions};
use super::{print_json, show};
use crate::SearchFlags;

impl SearchFlags {
    fn args<'a>(&'a self, model: Option<&'a str>) -> SearchArgs<'a> {
        SearchArgs {
            model,
            filter: self.filter.as_deref(),
            tags: &self.tags,
            sort: self.sort.as_deref(),
            limit: self.limit,
            cursor: self.cursor.as_deref(),
        }
    }

    /// The search compiled as the daemon will compile it: its error, if any (an
    /// expression's with a caret under the bad token).
    pub(super) fn check(&self, model: Option<&str>) -> Result<(), String> {
        Search::compile(self.args(model)).map(|_| ())
    }

    /// The request: `list` without a `name`, `versions` of `name` with one.
    fn request(&self, name: Option<&str>) -> Request {
        let s = SearchFields {
            filter: self.filter.clone(),
            tags: self.tags.clone(),
            sort: self.sort.clone(),
            limit: self.limit,
            cursor: self.cursor.clone(),
        };
        Request::search(name.map(str::to_string), s)
    }

    fn filters(&self) -> bool {
        self.filter.is_some() || !self.tags.is_empty()
    }
}

/// `list`, with the search's flags.
pub(super) fn list(c: &mut Client, s: &SearchFlags, json: bool) -> Result<(), ClientError> {
    let l: ModelList = c.call_as(&s.request(None))?;
    if json {
        print_json(&l);
    } else if l.models.is_empty() && s.filters() {
        outln!("no model has a version that matches");
    } else {
        print_list(&l.models);
    }
    say(&l.notes);
    more(l.models.len(), l.total, l.next_cursor.as_deref(), json);
    Ok(())
}

/// `versions NAME`, with the search's flags.
pub(super) fn versions(
    c: &mut Client,
    name: &str,
    s: &SearchFlags,
    json: bool,
) -> Result<(), ClientError> {
    let l: VersionList = c.call_as(&s.request(Some(name)))?;
    if l.versions.is_empty() && s.filters() && !json {
        outln!(
            "no version of {} matches",
            modelreg::display::escape_for_terminal(name)
        );
    } else {
        show(json, &l, |l| print_versions(&l.versions));
    }
    say(&l.notes);
    more(l.versions.len(), l.total, l.next_cursor.as_deref(), json);
    Ok(())
}

/// The daemon's notes on the search (a field no version has, a number compared with
/// text), on stderr: the table stays clean for pipes and the exit code is unchanged.
fn say(notes: &[String]) {
    for n in notes {
        eprintln!(
            "modelreg: note: {}",
            modelreg::display::escape_for_terminal(n)
        );
    }
}

/// On stderr (the table stays clean for pipes): how to ask for the next page.
fn more(shown: usize, total: Option<usize>, next: Option<&str>, json: bool) {
    if let (Some(cursor), false) = (next, json) {
        let total = total.map(|t| format!(" of {t}")).unwrap_or_default();
        eprintln!("modelreg: {shown}{total} shown; the next page: --cursor {cursor}");
    }
}
