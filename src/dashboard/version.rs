//! A version's page: state, metrics, metadata, files with download links and hashes, and
//! the commands that fetch it from the CLI, Python and Hugging Face.

use std::fmt::Write;

use super::html::{download_href, esc, link, model_href, page, table, tar_href, version_href};
use super::{Site, alias_tags, model, size_html, state_html, version_size};
use crate::registry::{
    BestBy, Kind, Model, RegistryError, Selector, StoredFile, Version, parse_version,
};

/// `/models/{name}/{selector}`: the version `selector` names (`vN` — tombstones too, so
/// that a removed version's page says when and why —, `latest`, `best` or an alias).
pub fn version_page(site: &Site, name: &str, selector: &str) -> Result<String, RegistryError> {
    let m = model(site, name)?;
    let (v, best_by) = match Selector::parse(selector) {
        Some(Selector::Number(n)) => match m.find(n) {
            Some(v) => (v, None),
            // `stored_version` words the error as `get` does.
            None => return Err(m.stored_version(name, n).unwrap_err()),
        },
        _ => m.select(name, Some(selector), (&site.config.best, None, None))?,
    };
    let title = format!("{name} v{}", v.number);
    let crumbs = [
        (Some("/".to_string()), "Models".to_string()),
        (Some(model_href(name)), name.to_string()),
        (None, format!("v{}", v.number)),
    ];
    let mut body = String::new();
    if parse_version(selector).is_err() {
        let by = best_by
            .map(|b: BestBy| format!(" by {}", esc(&b.metric)))
            .unwrap_or_default();
        let _ = writeln!(
            body,
            "<p><code>{}</code>{by} is v{n} now; this page names v{n}, which never changes: \
{}.</p>",
            esc(selector),
            link(&version_href(name, v.number), "a permanent link"),
            n = v.number,
        );
    }
    summary(&mut body, m, v);
    metrics(&mut body, v);
    if v.removed.is_some() {
        body.push_str(
            "<h2>Files</h2>\n<p>This version was removed: its files are deleted and only \
this record is kept, so that its number is never given again.</p>\n",
        );
    } else {
        files(&mut body, site, name, v);
        commands(&mut body, site, name, v);
    }
    // Last: free-form metadata can be long.
    metadata(&mut body, v);
    Ok(page(&title, &crumbs, &body))
}

fn summary(body: &mut String, m: &Model, v: &Version) {
    let mark = v
        .removed
        .as_ref()
        .or(v.deprecated.as_ref())
        .map(|mark| {
            format!(
                " at {}{}",
                esc(&mark.at),
                mark.reason
                    .as_deref()
                    .map(|r| format!(": {}", esc(r)))
                    .unwrap_or_default()
            )
        })
        .unwrap_or_default();
    let aliases = alias_tags(m, v.number);
    let kind = match v.kind {
        Kind::File => "a file",
        Kind::Folder => "a folder",
    };
    let _ = writeln!(
        body,
        "<dl><dt>State</dt><dd>{}{mark}</dd><dt>Registered</dt><dd>{}</dd>\
<dt>Source</dt><dd><code>{}</code></dd><dt>Kind</dt><dd>{kind}, {} file{}</dd>\
<dt>Size</dt><dd>{}</dd><dt>Aliases</dt><dd>{}</dd></dl>",
        state_html(v),
        esc(&v.registered_at),
        esc(&v.source),
        v.files.len(),
        if v.files.len() == 1 { "" } else { "s" },
        size_html(version_size(v)),
        if aliases.is_empty() {
            "none".to_string()
        } else {
            aliases
        },
    );
}

fn metrics(body: &mut String, v: &Version) {
    body.push_str("<h2>Metrics</h2>\n");
    if v.metrics.is_empty() {
        body.push_str("<p>None.</p>\n");
        return;
    }
    // The exact value, as registry.yaml holds it: this page is where one looks it up.
    let rows: Vec<String> = v
        .metrics
        .iter()
        .map(|(k, x)| {
            format!(
                "<th scope=\"row\">{}</th><td class=\"num\">{x}</td>",
                esc(k)
            )
        })
        .collect();
    body.push_str(&table("Metrics", &["Metric", "Value"], &rows));
    if let Some(last) = v.metrics_history.last() {
        let _ = writeln!(
            body,
            "<p class=\"muted\">Updated by a sidecar edit at {} ({} earlier set{} kept in \
registry.yaml).</p>",
            esc(&last.replaced_at),
            v.metrics_history.len(),
            if v.metrics_history.len() == 1 {
                ""
            } else {
                "s"
            },
        );
    }
}

fn metadata(body: &mut String, v: &Version) {
    body.push_str("<h2>Metadata</h2>\n");
    if v.metadata.is_empty() {
        body.push_str("<p>None.</p>\n");
        return;
    }
    body.push_str("<dl>");
    for (k, value) in v.metadata.iter() {
        // A string as it is; anything else (numbers, lists, maps) as JSON.
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let _ = write!(body, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(&text));
    }
    body.push_str("</dl>\n");
}

/// A stored file's path inside its version folder (`model.safetensors`, `onnx/x.onnx`):
/// what the download route and the Hugging Face `filename` take.
pub(super) fn path_in_version(site: &Site, name: &str, n: u32, f: &StoredFile) -> String {
    let dir = crate::store::version_dir(&site.config.store, name, n);
    let abs = site.config.root.join(&f.path);
    match abs.strip_prefix(&dir) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        // Not under the version folder (cannot happen for a stored file): its last part.
        Err(_) => f.path.rsplit('/').next().unwrap_or(&f.path).to_string(),
    }
}

fn files(body: &mut String, site: &Site, name: &str, v: &Version) {
    body.push_str("<h2>Files</h2>\n<p>Each file's name is its download link.</p>\n");
    let rows: Vec<String> = v
        .files
        .iter()
        .map(|f| {
            let rel = path_in_version(site, name, v.number, f);
            format!(
                "<th scope=\"row\">{}</th><td class=\"num\">{}</td><td class=\"hash\">{}</td>",
                link(&download_href(name, v.number, &rel), &rel),
                size_html(f.size),
                esc(&f.sha256),
            )
        })
        .collect();
    body.push_str(&table("Files", &["File", "Size", "SHA-256"], &rows));
    if v.kind == Kind::Folder {
        let _ = writeln!(
            body,
            "<p>All of them as one archive: {}.</p>",
            link(&tar_href(name, v.number), &format!("v{}.tar", v.number))
        );
    }
}

/// `s` as one shell word: as it is when it is plainly safe, else single-quoted.
fn shell(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:=@%+,".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Whether huggingface_hub (2.4) takes `name` as a repository id (its
/// `validate_repo_id`): 1 to 96 ASCII letters, digits, `_`, `-` or `.`, starting and
/// ending with a letter, digit or `_`, without `--` or `..`, not ending in `.git`. The
/// same rule as `hfcache::repo_name_ok`, which the Hub routes serve by.
fn hf_repo_id(name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let (Some(first), Some(last)) = (name.chars().next(), name.chars().last()) else {
        return false;
    };
    name.chars().count() <= 96
        && name.chars().all(|c| word(c) || c == '-' || c == '.')
        && word(first)
        && word(last)
        && !name.contains("--")
        && !name.contains("..")
        && !name.ends_with(".git")
}

/// `s` as a Python string literal (a JSON string is one).
fn py(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn commands(body: &mut String, site: &Site, name: &str, v: &Version) {
    let n = v.number;
    let base = site.base_url;
    let mut cmds = vec![
        (
            "Command line (on the registry's machine)",
            format!("modelreg get {} v{n}", shell(name)),
        ),
        (
            "Python (on the registry's machine)",
            format!(
                "from modelreg import ModelRegistry\n\
version = ModelRegistry().get({}, \"v{n}\")\nprint(version.path)",
                py(name)
            ),
        ),
    ];
    // From another machine a request needs a token unless anonymous reading is on; the
    // commands read it from $MODELREG_TOKEN (as `modelreg --url` does), never print one.
    let anonymous = site.config.http.as_ref().is_some_and(|h| h.anonymous_read);
    if hf_repo_id(name) {
        // `token=False` when anonymous: huggingface_hub would otherwise send a Hugging
        // Face login it finds (HF_TOKEN, ~/.cache/huggingface/token), which is refused.
        let (import, token) = if anonymous {
            ("", "False")
        } else {
            ("import os\n", "os.environ[\"MODELREG_TOKEN\"]")
        };
        cmds.push((
            "Hugging Face (from any machine)",
            format!(
                "{import}from huggingface_hub import snapshot_download\n\
path = snapshot_download({}, revision=\"v{n}\",\n    endpoint={}, token={token})\nprint(path)",
                py(name),
                py(base)
            ),
        ));
    }
    if let [only] = v.files.as_slice() {
        let rel = path_in_version(site, name, n, only);
        let url = format!("{base}{}", download_href(name, n, &rel));
        let auth = if anonymous {
            ""
        } else {
            "-H \"Authorization: Bearer $MODELREG_TOKEN\" "
        };
        cmds.push((
            "curl (from any machine)",
            format!("curl -fLO {auth}{}", shell(&url)),
        ));
    }
    body.push_str("<h2>Use it</h2>\n");
    if !anonymous {
        body.push_str(
            "<p>From another machine, put a read token in <code>MODELREG_TOKEN</code> first \
(<code>modelreg token create NAME --scope read</code> on the registry's machine prints one).</p>\n",
        );
    }
    if !hf_repo_id(name) {
        body.push_str(
            "<p>The Hugging Face client refuses this model name as a repository id (it takes \
ASCII letters, digits, <code>_</code>, <code>-</code> and <code>.</code>, at most 96), so it cannot \
fetch this model; the other ways can.</p>\n",
        );
    }
    for (i, (label, text)) in cmds.iter().enumerate() {
        let _ = writeln!(
            body,
            "<h3 id=\"cmd-{i}\">{label}</h3>\n<pre aria-labelledby=\"cmd-{i}\" tabindex=\"0\"><code>{}</code></pre>",
            esc(text)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugging_face_repo_ids_follow_the_client_rule() {
        for ok in ["resnet18", "Qwen2.5-0.5B-Instruct.Q4_K_M", "bert_base"] {
            assert!(hf_repo_id(ok), "{ok}");
        }
        let long = "a".repeat(97);
        for bad in [
            "r&d",
            "modèle",
            "tiny bert",
            "-x",
            "x.",
            "a--b",
            "a..b",
            "m.git",
            "",
            &long,
        ] {
            assert!(!hf_repo_id(bad), "{bad}");
        }
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell("resnet18"), "resnet18");
        assert_eq!(shell("r&d"), "'r&d'");
        assert_eq!(shell("it's"), r"'it'\''s'");
        assert_eq!(py("a\"b"), r#""a\"b""#);
    }
}
