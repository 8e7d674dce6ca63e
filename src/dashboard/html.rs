//! HTML building blocks of the dashboard: escaping, URL segments, the page frame, its CSS.
//!
//! Every piece of text from the catalog (model names, aliases, metadata, sources) is user
//! input: it reaches the page only through [`esc`] (text and quoted attributes) or
//! [`seg`] (a URL path segment, escaped again by [`esc`] where it sits in an attribute).

use std::fmt::Write;

/// `s` safe as HTML text and as a double- or single-quoted attribute value.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` as one URL path segment: every byte but the unreserved ones (RFC 3986) is
/// percent-encoded, so `/`, `?`, `#`, `%` and `&` in a name stay inside its segment.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A relative path inside a version (`onnx/model.onnx`) as URL path segments, each
/// encoded by [`seg`] and joined by `/`.
pub fn segs(path: &str) -> String {
    path.split('/').map(seg).collect::<Vec<_>>().join("/")
}

/// The link to a model's page.
pub fn model_href(name: &str) -> String {
    format!("/models/{}", seg(name))
}

/// The link to a version's page.
pub fn version_href(name: &str, n: u32) -> String {
    format!("/models/{}/v{n}", seg(name))
}

/// The download link of a file of version `n`, by its path inside the version folder:
/// the HTTP API's file route (docs/http.md).
pub fn download_href(name: &str, n: u32, path: &str) -> String {
    format!(
        "/api/v1/models/{}/versions/v{n}/files/{}",
        seg(name),
        segs(path)
    )
}

/// The link to version `n` as one tar archive of its files.
pub fn tar_href(name: &str, n: u32) -> String {
    format!("/api/v1/models/{}/versions/v{n}/tar", seg(name))
}

/// `<a href="href">text</a>`, both escaped.
pub fn link(href: &str, text: &str) -> String {
    format!("<a href=\"{}\">{}</a>", esc(href), esc(text))
}

/// One small stylesheet, inlined in every page (no external assets). The colour pairs
/// are checked for a contrast of at least 4.5:1 by a unit test.
pub const CSS: &str = "\
:root{--fg:#1b1b1b;--muted:#4a4a4a;--link:#0b57d0;--warn:#8a4b00;--bad:#a00000;\
--bg:#ffffff;--head:#f1f3f5;--line:#c9cdd2;--focus:#b45309}\
*{box-sizing:border-box}\
body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
color:var(--fg);background:var(--bg)}\
header,main,footer{max-width:72rem;margin:0 auto;padding:.75rem 1rem}\
header{border-bottom:1px solid var(--line)}\
footer{border-top:1px solid var(--line);color:var(--muted);font-size:.9rem}\
nav ol{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:.3rem}\
nav li{overflow-wrap:anywhere}\
nav li+li::before{content:'/';margin-right:.3rem;color:var(--muted)}\
a{color:var(--link)}\
:focus-visible{outline:3px solid var(--focus);outline-offset:2px}\
.skip{position:absolute;left:-9999px;top:.5rem}\
.skip:focus{left:1rem;background:var(--bg);padding:.5rem;z-index:1}\
h1{font-size:1.6rem;margin:.5rem 0;overflow-wrap:anywhere}\
h2{font-size:1.25rem;margin:2rem 0 .5rem}\
h3{font-size:1.05rem;margin:1rem 0 .25rem}\
.scroll{overflow-x:auto;max-width:100%;margin:.5rem 0}\
table{border-collapse:collapse;min-width:100%}\
caption,.vh{position:absolute;width:1px;height:1px;overflow:hidden;clip-path:inset(50%);white-space:nowrap}\
th,td{padding:.4rem .6rem;border-bottom:1px solid var(--line);text-align:left;\
vertical-align:top;white-space:nowrap}\
thead th{background:var(--head)}\
.num{text-align:right;font-variant-numeric:tabular-nums}\
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}\
pre{background:var(--head);border:1px solid var(--line);padding:.6rem;overflow-x:auto;\
white-space:pre;user-select:all;margin:.25rem 0 1rem}\
.hash{font-family:ui-monospace,monospace;font-size:.85em;white-space:normal;word-break:break-all;\
min-width:16rem}\
.muted{color:var(--muted)}\
.deprecated{color:var(--warn);font-weight:600}\
.removed{color:var(--bad);font-weight:600}\
.tag{display:inline-block;border:1px solid var(--line);border-radius:.25rem;padding:0 .35rem;\
margin:0 .25rem .25rem 0;white-space:nowrap}\
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,26rem),1fr));gap:1rem}\
figure{margin:0;border:1px solid var(--line);padding:.5rem}\
figcaption{font-weight:600;overflow-wrap:anywhere}\
svg{width:100%;height:auto;display:block}\
svg text{fill:var(--fg);font-size:14px}svg .lab{fill:var(--muted)}\
.ax{stroke:var(--muted)}.grid{stroke:var(--line)}.ln{stroke:var(--link);fill:none;stroke-width:2}\
.pt{fill:var(--link)}.dep{fill:var(--bg);stroke:var(--warn);stroke-width:2}.bp{fill:none;stroke:var(--bad);stroke-width:2.5}svg .bt{fill:var(--bad);font-weight:600}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:.5rem 0}\
dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}\
@media (max-width:40rem){svg text{font-size:18px}dl{grid-template-columns:1fr}dd{margin-bottom:.4rem}h1{font-size:1.35rem}}";

/// One breadcrumb: its link (none for the current page) and its text.
pub type Crumb = (Option<String>, String);

/// A whole page: the frame (skip link, breadcrumb navigation, main landmark with the one
/// `h1`, footer) around `body`. `title` and the crumbs are escaped here; `body` is HTML.
pub fn page(title: &str, crumbs: &[Crumb], body: &str) -> String {
    let mut nav = String::new();
    for (href, text) in crumbs {
        match href {
            Some(h) => {
                let _ = write!(nav, "<li>{}</li>", link(h, text));
            }
            None => {
                let _ = write!(nav, "<li aria-current=\"page\">{}</li>", esc(text));
            }
        }
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
<title>{t} · modelreg</title>\n<style>{CSS}</style>\n</head>\n<body>\n\
<a class=\"skip\" href=\"#main\">Skip to content</a>\n\
<header><nav aria-label=\"Breadcrumb\"><ol>{nav}</ol></nav></header>\n\
<main id=\"main\" tabindex=\"-1\">\n<h1>{t}</h1>\n{body}</main>\n\
<footer>modelreg {ver} · a read-only view of the catalog · \
<a href=\"/api/v1/models\">JSON API</a></footer>\n</body>\n</html>\n",
        t = esc(title),
        ver = env!("CARGO_PKG_VERSION"),
    )
}

/// A table that scrolls sideways on its own on a narrow screen: a labelled region that
/// takes keyboard focus, so that it can be scrolled without a mouse. `label` is also its
/// caption, for screen readers only (a visible heading stands above every table).
pub fn table(label: &str, head: &[&str], rows: &[String]) -> String {
    let mut out = format!(
        "<div class=\"scroll\" role=\"region\" aria-label=\"{l}\" tabindex=\"0\">\
<table><caption>{l}</caption><thead><tr>",
        l = esc(label)
    );
    for h in head {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        let _ = write!(out, "<tr>{r}</tr>");
    }
    out.push_str("</tbody></table></div>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup_and_no_quote_open() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert_eq!(esc("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn url_segments_keep_separators_inside_the_segment() {
        assert_eq!(seg("a&b c/d?e#f%"), "a%26b%20c%2Fd%3Fe%23f%25");
        assert_eq!(seg("Qwen2.5-0.5B_x~"), "Qwen2.5-0.5B_x~");
        assert_eq!(seg("é"), "%C3%A9");
        assert_eq!(segs("onnx/model b.onnx"), "onnx/model%20b.onnx");
        assert_eq!(version_href("r&d", 3), "/models/r%26d/v3");
    }

    #[test]
    fn the_frame_has_landmarks_a_skip_link_and_one_escaped_h1() {
        let crumbs = [
            (Some("/".to_string()), "Models".to_string()),
            (None, "<b>".to_string()),
        ];
        let p = page("<b>", &crumbs, "<p>body</p>");
        assert!(p.starts_with("<!DOCTYPE html>"));
        assert!(p.contains("name=\"viewport\""));
        assert!(p.contains("<a class=\"skip\" href=\"#main\">"));
        assert!(p.contains("<main id=\"main\""));
        assert!(p.contains("<nav aria-label=\"Breadcrumb\">"));
        assert!(p.contains("<h1>&lt;b&gt;</h1>"));
        assert!(p.contains("<li aria-current=\"page\">&lt;b&gt;</li>"));
        assert_eq!(p.matches("<h1>").count(), 1);
        assert!(!p.contains("<b>"));
        // No external asset of any kind.
        assert!(!p.contains("src=") && !p.contains("<link"));
    }

    /// WCAG relative luminance of `#rrggbb`.
    fn luminance(hex: &str) -> f64 {
        let c = |i: usize| {
            let v = u8::from_str_radix(&hex[i..i + 2], 16).unwrap() as f64 / 255.0;
            if v <= 0.03928 {
                v / 12.92
            } else {
                ((v + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * c(1) + 0.7152 * c(3) + 0.0722 * c(5)
    }

    fn var(name: &str) -> &'static str {
        let at = CSS.find(&format!("--{name}:")).unwrap() + name.len() + 3;
        &CSS[at..at + 7]
    }

    #[test]
    fn every_text_colour_has_a_contrast_of_at_least_4_5_on_every_background() {
        for fg in ["fg", "muted", "link", "warn", "bad"] {
            for bg in ["bg", "head"] {
                let (a, b) = (luminance(var(fg)), luminance(var(bg)));
                let ratio = (a.max(b) + 0.05) / (a.min(b) + 0.05);
                assert!(ratio >= 4.5, "{fg} on {bg}: {ratio:.2}");
            }
        }
        // The focus ring is not text: 3:1 against the page (WCAG 1.4.11).
        let (f, b) = (luminance(var("focus")), luminance(var("bg")));
        assert!((b + 0.05) / (f + 0.05) >= 3.0);
    }
}
