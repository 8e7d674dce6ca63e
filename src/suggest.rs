//! "Did you mean": the closest known word to a mistyped one, for the daemon's error
//! messages (so every client, the CLI, Python or a raw socket, gets the same hint).

/// The edit (Levenshtein) distance between `a` and `b`, counted in characters, with a
/// swap of two neighbours counted as one edit (`latets` is one edit from `latest`).
pub fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows of the optimal-string-alignment table: two back are needed for swaps.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `word`, if one is close enough to be a likely typo: within
/// a third of the word's length in edits (at least one), or one that begins with the
/// word or the word with it (`resnet` -> `resnet18`, `acc` -> `accuracy`). Comparison
/// ignores case; on a tie the first candidate wins.
pub fn closest<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let w = word.to_lowercase();
    if w.is_empty() {
        return None;
    }
    let limit = (w.chars().count() / 3).max(1);
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        let lc = c.to_lowercase();
        if lc == w && c != word {
            // Only the case differs: the best possible hint.
            return Some(c);
        }
        let d = distance(&w, &lc);
        let prefix = w.chars().count() >= 2 && (lc.starts_with(&w) || w.starts_with(&lc));
        if (d <= limit || prefix) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// `; did you mean "x"?` for the closest candidate, or nothing: ready to append to an
/// error message.
pub fn hint<'a, I>(word: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    closest(word, candidates)
        .map(|c| format!("; did you mean {c:?}?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_inserts_deletes_substitutions_and_swaps() {
        assert_eq!(distance("", ""), 0);
        assert_eq!(distance("abc", ""), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("resnet", "resnet18"), 2);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("latets", "latest"), 1);
        assert_eq!(distance("prodcution", "production"), 1);
        assert_eq!(distance("accuracy", "accuracy"), 0);
        // Characters, not bytes.
        assert_eq!(distance("modèle", "modele"), 1);
    }

    #[test]
    fn closest_finds_typos_and_prefixes_but_not_strangers() {
        let models = ["mobilenet", "resnet18", "resnet50"];
        assert_eq!(closest("resnet", models), Some("resnet18"));
        assert_eq!(closest("resnet19", models), Some("resnet18"));
        assert_eq!(closest("mobilnet", models), Some("mobilenet"));
        assert_eq!(closest("bert", models), None);
        assert_eq!(closest("", models), None);
        let selectors = ["latest", "best", "production"];
        assert_eq!(closest("latets", selectors), Some("latest"));
        assert_eq!(closest("prod", selectors), Some("production"));
        assert_eq!(closest("Best", selectors), Some("best"));
        assert_eq!(closest("staging", selectors), None);
        assert_eq!(closest("acc", ["accuracy", "loss"]), Some("accuracy"));
        assert_eq!(closest("a", ["accuracy", "loss"]), None);
    }

    #[test]
    fn hint_is_ready_to_append() {
        assert_eq!(hint("resnet", ["resnet18"]), "; did you mean \"resnet18\"?");
        assert_eq!(hint("bert", ["resnet18"]), "");
    }
}
