//! One metric across a model's versions as an inline SVG line chart, drawn on the server
//! (no script): axes, tick labels, a point per version with its value as a tooltip, the
//! best version ringed, and a text summary as the chart's accessible name.

use std::fmt::Write;

use super::html::esc;
use crate::config::Direction;
use crate::display::compact_number;

/// One version's value of the metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// N in `vN`.
    pub version: u32,
    /// The metric's value (non-finite values are listed as not plotted).
    pub value: f64,
    /// Deprecated: drawn hollow, as `best` skips it.
    pub deprecated: bool,
}

const W: f64 = 480.0;
const H: f64 = 220.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 24.0;
const BOTTOM: f64 = 44.0;
/// Space between the plot's edge and the highest or lowest point.
const PAD: f64 = 10.0;
/// At most this many version labels under the x axis; more would overlap.
const MAX_X_LABELS: usize = 10;

/// A figure with the chart of `metric` over `points` (any order), the version `best`
/// ringed when it is among them, under a caption saying which direction is better. `id`
/// must be unique in the page: it names the SVG's title and description.
pub fn chart(
    id: &str,
    metric: &str,
    points: &[Point],
    best: Option<u32>,
    direction: Direction,
) -> String {
    let mut plotted: Vec<Point> = points
        .iter()
        .copied()
        .filter(|p| p.value.is_finite())
        .collect();
    plotted.sort_by_key(|p| p.version);
    let skipped = points.len() - plotted.len();
    let best = best.and_then(|n| plotted.iter().find(|p| p.version == n).copied());
    let better = match direction {
        Direction::Max => "higher is better",
        Direction::Min => "lower is better",
    };
    let best_text = best
        .map(|b| format!("; best v{} = {}", b.version, compact_number(b.value)))
        .unwrap_or_default();
    let not_plotted = match skipped {
        0 => String::new(),
        1 => " 1 value is not plotted: it is not a finite number.".to_string(),
        n => format!(" {n} values are not plotted: they are not finite numbers."),
    };
    let mut out = format!(
        "<figure><figcaption>{m} <span class=\"muted\">({better}{best_text})</span></figcaption>",
        m = esc(metric)
    );
    let (Some(first), Some(last)) = (plotted.first(), plotted.last()) else {
        let _ = write!(
            out,
            "<p class=\"muted\">No value of {} to plot.{not_plotted}</p></figure>",
            esc(metric)
        );
        return out;
    };
    let (lo, hi) = plotted
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.value), hi.max(p.value))
        });
    let at = |v: f64| {
        plotted
            .iter()
            .find(|p| p.value == v)
            .map_or(0, |p| p.version)
    };
    let summary = format!(
        "{metric} of {n} version{s}, v{a} to v{b}: lowest {lo} (v{lv}), highest {hi} (v{hv}){best_text}.{not_plotted}",
        n = plotted.len(),
        s = if plotted.len() == 1 { "" } else { "s" },
        a = first.version,
        b = last.version,
        lo = compact_number(lo),
        hi = compact_number(hi),
        lv = at(lo),
        hv = at(hi),
    );
    let scale = Scale::new(lo, hi, first.version, last.version);
    let _ = write!(
        out,
        "<svg role=\"img\" viewBox=\"0 0 {W} {H}\" aria-labelledby=\"{id}-t {id}-d\">\
<title id=\"{id}-t\">{t}</title><desc id=\"{id}-d\">{d}</desc>",
        id = esc(id),
        t = esc(&format!("{metric} across versions")),
        d = esc(&summary),
    );
    axes(&mut out, &scale, metric, &plotted);
    let line: Vec<String> = plotted
        .iter()
        .map(|p| format!("{:.1},{:.1}", scale.x(p.version), scale.y(p.value)))
        .collect();
    if line.len() > 1 {
        let _ = write!(
            out,
            "<polyline class=\"ln\" points=\"{}\"/>",
            line.join(" ")
        );
    }
    for p in &plotted {
        let (class, note) = if p.deprecated {
            ("pt dep", " (deprecated)")
        } else {
            ("pt", "")
        };
        let _ = write!(
            out,
            "<circle class=\"{class}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\"><title>v{}{note}: {}</title></circle>",
            scale.x(p.version),
            scale.y(p.value),
            p.version,
            compact_number(p.value)
        );
    }
    if let Some(b) = best {
        let (x, y) = (scale.x(b.version), scale.y(b.value));
        // The label stays inside the plot: left of a point near the right edge, under a
        // point at the top.
        let anchor = if x > W - RIGHT - 40.0 {
            "end"
        } else {
            "middle"
        };
        let ty = if y < TOP + 16.0 { y + 22.0 } else { y - 12.0 };
        let _ = write!(
            out,
            "<circle class=\"bp\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"9\"/>\
<text class=\"bt\" x=\"{x:.1}\" y=\"{ty:.1}\" text-anchor=\"{anchor}\">best v{}</text>",
            b.version
        );
    }
    out.push_str("</svg>");
    if skipped > 0 {
        let _ = write!(out, "<p class=\"muted\">{}</p>", not_plotted.trim());
    }
    out.push_str("</figure>");
    out
}

/// Where values and version numbers fall in the SVG's coordinates.
struct Scale {
    lo: f64,
    hi: f64,
    first: u32,
    last: u32,
}

impl Scale {
    fn new(lo: f64, hi: f64, first: u32, last: u32) -> Scale {
        Scale {
            lo,
            hi,
            first,
            last,
        }
    }

    /// Versions by number, so that gaps (removed versions) show as gaps.
    fn x(&self, n: u32) -> f64 {
        let width = W - LEFT - RIGHT;
        if self.first == self.last {
            return LEFT + width / 2.0;
        }
        LEFT + f64::from(n - self.first) / f64::from(self.last - self.first) * width
    }

    fn y(&self, v: f64) -> f64 {
        let height = H - TOP - BOTTOM - 2.0 * PAD;
        // Halves first: `hi - lo` of two huge values of opposite sign overflows to
        // infinity, their halves' difference does not.
        let span = self.hi * 0.5 - self.lo * 0.5;
        let t = (v * 0.5 - self.lo * 0.5) / span;
        let t = if span > 0.0 && t.is_finite() {
            t.clamp(0.0, 1.0)
        } else {
            0.5
        };
        TOP + PAD + (1.0 - t) * height
    }
}

/// A value as an axis label: short enough to fit left of the plot.
fn tick(x: f64) -> String {
    let s = compact_number(x);
    if s.len() > 9 { format!("{x:.2e}") } else { s }
}

/// The axes, their tick labels and grid lines, and the axis titles.
fn axes(out: &mut String, scale: &Scale, metric: &str, plotted: &[Point]) {
    let (bottom, right) = (H - BOTTOM, W - RIGHT);
    let _ = write!(
        out,
        "<line class=\"ax\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{bottom}\"/>\
<line class=\"ax\" x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\"/>"
    );
    let mut ys = vec![scale.lo];
    if scale.hi > scale.lo {
        ys.push(scale.lo * 0.5 + scale.hi * 0.5);
        ys.push(scale.hi);
    }
    for v in ys {
        let y = scale.y(v);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{right}\" y2=\"{y:.1}\" stroke-dasharray=\"3 3\"/>\
<text class=\"lab\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT - 6.0,
            y + 4.0,
            esc(&tick(v))
        );
    }
    let step = plotted.len().div_ceil(MAX_X_LABELS).max(1);
    for (i, p) in plotted.iter().enumerate() {
        if i % step != 0 && i + 1 != plotted.len() {
            continue;
        }
        // The last label is always shown; the one before it may be too close.
        if i + 1 != plotted.len() && i + step >= plotted.len() && step > 1 {
            continue;
        }
        let _ = write!(
            out,
            "<text class=\"lab\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">v{}</text>",
            scale.x(p.version),
            bottom + 16.0,
            p.version
        );
    }
    let short: String = metric.chars().take(24).collect();
    let _ = write!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">version</text>\
<text x=\"14\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {:.1})\">{}</text>",
        LEFT + (right - LEFT) / 2.0,
        H - 6.0,
        TOP + (bottom - TOP) / 2.0,
        TOP + (bottom - TOP) / 2.0,
        esc(&short)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(values: &[(u32, f64)]) -> Vec<Point> {
        values
            .iter()
            .map(|&(version, value)| Point {
                version,
                value,
                deprecated: version == 2,
            })
            .collect()
    }

    /// Every number in the SVG's coordinate attributes, which must all be finite and
    /// inside the view box.
    fn coordinates(svg: &str) -> Vec<f64> {
        let mut out = Vec::new();
        for attr in ["cx", "cy", "x", "y", "x1", "y1", "x2", "y2"] {
            for part in svg.split(&format!(" {attr}=\"")).skip(1) {
                let v = &part[..part.find('"').unwrap()];
                out.push(v.parse::<f64>().unwrap_or(f64::NAN));
            }
        }
        out
    }

    fn inside(svg: &str) {
        for c in coordinates(svg) {
            assert!(c.is_finite() && (0.0..=W).contains(&c), "{c} in {svg}");
        }
    }

    #[test]
    fn no_points_is_a_sentence_not_an_empty_chart() {
        let f = chart("c0", "accuracy", &[], None, Direction::Max);
        assert!(!f.contains("<svg"));
        assert!(f.contains("No value of accuracy to plot."));
    }

    #[test]
    fn one_point_sits_in_the_middle_and_is_the_best() {
        let f = chart("c1", "loss", &pts(&[(3, 0.25)]), Some(3), Direction::Min);
        assert!(f.contains("lower is better; best v3 = 0.25"));
        assert!(f.contains("<title id=\"c1-t\">loss across versions</title>"));
        assert!(f.contains("aria-labelledby=\"c1-t c1-d\""));
        assert_eq!(f.matches("class=\"pt\"").count(), 1);
        assert!(!f.contains("<polyline"));
        assert!(f.contains("best v3</text>"));
        inside(&f);
    }

    #[test]
    fn many_points_make_a_line_with_the_best_ringed_and_every_version_labelled() {
        let p = pts(&[(1, 0.5), (2, 0.7), (4, 0.9), (5, 0.8)]);
        let f = chart("c2", "accuracy", &p, Some(4), Direction::Max);
        assert_eq!(f.matches("class=\"pt").count(), 4);
        assert_eq!(f.matches("class=\"bp\"").count(), 1);
        assert!(f.contains("<title>v2 (deprecated): 0.7</title>"));
        assert!(f.contains("<title>v4: 0.9</title>"));
        for v in ["v1", "v2", "v4", "v5"] {
            assert!(f.contains(&format!(">{v}</text>")), "{v}");
        }
        assert!(f.contains("lowest 0.5 (v1), highest 0.9 (v4)"));
        // v3 is missing: the x positions keep the gap (v2 -> v4 is twice v1 -> v2).
        let xs: Vec<f64> = f
            .split(" cx=\"")
            .skip(1)
            .map(|s| s[..s.find('"').unwrap()].parse().unwrap())
            .collect();
        assert!(
            ((xs[2] - xs[1]) - 2.0 * (xs[1] - xs[0])).abs() < 0.2,
            "{xs:?}"
        );
        inside(&f);
    }

    #[test]
    fn many_versions_get_at_most_a_few_labels_and_the_last_one() {
        let p: Vec<Point> = (1..=95)
            .map(|n| Point {
                version: n,
                value: f64::from(n),
                deprecated: false,
            })
            .collect();
        let f = chart("c3", "step", &p, None, Direction::Max);
        let labels = f.matches("text-anchor=\"middle\">v").count();
        assert!(labels <= MAX_X_LABELS + 1, "{labels}");
        assert!(f.contains(">v95</text>"));
        inside(&f);
    }

    #[test]
    fn nan_and_infinite_values_are_left_out_and_said_so() {
        let p = pts(&[(1, f64::NAN), (2, 0.5), (3, f64::INFINITY), (4, 0.6)]);
        let f = chart("c4", "f1", &p, Some(4), Direction::Max);
        assert_eq!(f.matches("class=\"pt").count(), 2);
        assert!(f.contains("2 values are not plotted"));
        assert!(!f.contains("NaN") && !f.contains("inf"));
        inside(&f);
        let only_nan = chart("c5", "f1", &pts(&[(1, f64::NAN)]), None, Direction::Max);
        assert!(!only_nan.contains("<svg"));
        assert!(only_nan.contains("1 value is not plotted"));
    }

    #[test]
    fn huge_values_of_both_signs_stay_inside_the_chart() {
        let p = pts(&[(1, -f64::MAX), (2, f64::MAX), (3, 1e-300), (4, 0.0)]);
        let f = chart("c6", "x", &p, Some(2), Direction::Max);
        inside(&f);
        assert!(f.contains("1.80e308"), "{f}");
        // Equal values: one flat line in the middle, no division by zero.
        let flat = chart(
            "c7",
            "x",
            &pts(&[(1, 2.0), (2, 2.0)]),
            Some(2),
            Direction::Max,
        );
        inside(&flat);
        // Neighbouring subnormals: their halves are equal although they are not.
        let tiny = pts(&[(1, 5e-324), (2, 1e-323)]);
        inside(&chart("c8", "x", &tiny, None, Direction::Min));
    }

    #[test]
    fn a_hostile_metric_name_is_escaped_everywhere() {
        let f = chart(
            "c9",
            "<script>x</script>",
            &pts(&[(1, 1.0)]),
            None,
            Direction::Max,
        );
        assert!(!f.contains("<script>"));
        assert!(f.contains("&lt;script&gt;x&lt;/script&gt;"));
    }
}
