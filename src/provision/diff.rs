//! Line diffs of a template override against stock, in the unified format (`diff -u`), for
//! people. Templates are a few hundred lines, so a longest-common-subsequence table is small;
//! beyond [`MAX_CELLS`] the diff shows the whole text replaced rather than spend the memory.
//! (The `similar` crate does this in general, at 254 KiB of the appliance binary.)

/// The largest LCS table built (lines of old × lines of new), about 8 MiB of `u16`.
const MAX_CELLS: usize = 4 * 1024 * 1024;

/// Lines of context around each change.
const CONTEXT: usize = 3;

/// One line of the edit script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Same(usize, usize),
    Removed(usize),
    Added(usize),
}

/// `new` against `old` as a unified diff with `---`/`+++` headers naming `old_name` and
/// `new_name`; empty when they are the same.
pub fn unified(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    let old_lines: Vec<&str> = old.lines().collect();
    let new_lines: Vec<&str> = new.lines().collect();
    let steps = edit_script(&old_lines, &new_lines);
    if steps.iter().all(|step| matches!(step, Step::Same(..))) {
        return String::new();
    }
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    for hunk in hunks(&steps) {
        let steps = &steps[hunk.clone()];
        let (old_start, new_start) = start_of(steps);
        let old_count = steps.iter().filter(|s| !matches!(s, Step::Added(_))).count();
        let new_count = steps.iter().filter(|s| !matches!(s, Step::Removed(_))).count();
        out.push_str(&format!("@@ -{} +{} @@\n", range(old_start, old_count), range(new_start, new_count)));
        for step in steps {
            let line = match *step {
                Step::Same(i, _) => format!(" {}", old_lines[i]),
                Step::Removed(i) => format!("-{}", old_lines[i]),
                Step::Added(j) => format!("+{}", new_lines[j]),
            };
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// A hunk's range as `diff -u` writes it: the 1-based first line and the count, the count
/// left out when it is 1, and an empty range named by the line before it.
fn range(start: usize, count: usize) -> String {
    match count {
        0 => format!("{start},0"),
        1 => format!("{}", start + 1),
        _ => format!("{},{count}", start + 1),
    }
}

/// The 0-based old and new line where a hunk's steps begin. A hunk without old (or new)
/// lines only happens when that text is empty, so it begins at 0.
fn start_of(steps: &[Step]) -> (usize, usize) {
    let old = steps.iter().find_map(|s| match *s {
        Step::Same(i, _) | Step::Removed(i) => Some(i),
        Step::Added(_) => None,
    });
    let new = steps.iter().find_map(|s| match *s {
        Step::Same(_, j) | Step::Added(j) => Some(j),
        Step::Removed(_) => None,
    });
    (old.unwrap_or(0), new.unwrap_or(0))
}

/// The ranges of `steps` to show: each change with up to [`CONTEXT`] unchanged lines around
/// it, changes closer than twice that merged into one hunk.
fn hunks(steps: &[Step]) -> Vec<std::ops::Range<usize>> {
    let mut hunks: Vec<std::ops::Range<usize>> = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        if matches!(step, Step::Same(..)) {
            continue;
        }
        let start = index.saturating_sub(CONTEXT);
        let end = (index + CONTEXT + 1).min(steps.len());
        match hunks.last_mut() {
            Some(last) if start <= last.end => last.end = last.end.max(end),
            _ => hunks.push(start..end),
        }
    }
    hunks
}

/// The shortest edit script from `old` to `new` by a longest common subsequence; the whole
/// text replaced when the table would be too large.
fn edit_script(old: &[&str], new: &[&str]) -> Vec<Step> {
    // Lines equal at both ends need no table.
    let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let suffix = old[prefix..].iter().rev().zip(new[prefix..].iter().rev()).take_while(|(a, b)| a == b).count();
    let (old_mid, new_mid) = (&old[prefix..old.len() - suffix], &new[prefix..new.len() - suffix]);
    let mut steps: Vec<Step> = (0..prefix).map(|i| Step::Same(i, i)).collect();
    let (rows, columns) = (old_mid.len(), new_mid.len());
    if rows.saturating_mul(columns) > MAX_CELLS || rows.max(columns) >= usize::from(u16::MAX) {
        steps.extend((0..rows).map(|i| Step::Removed(prefix + i)));
        steps.extend((0..columns).map(|j| Step::Added(prefix + j)));
    } else {
        // lcs[i][j]: the common subsequence length of old_mid[i..] and new_mid[j..].
        let width = columns + 1;
        let mut lcs = vec![0u16; (rows + 1) * width];
        for i in (0..rows).rev() {
            for j in (0..columns).rev() {
                lcs[i * width + j] = if old_mid[i] == new_mid[j] {
                    lcs[(i + 1) * width + j + 1] + 1
                } else {
                    lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < rows || j < columns {
            if i < rows && j < columns && old_mid[i] == new_mid[j] {
                steps.push(Step::Same(prefix + i, prefix + j));
                i += 1;
                j += 1;
            } else if i < rows && (j == columns || lcs[(i + 1) * width + j] >= lcs[i * width + j + 1]) {
                // Removals before additions, as diff prints a changed line.
                steps.push(Step::Removed(prefix + i));
                i += 1;
            } else {
                steps.push(Step::Added(prefix + j));
                j += 1;
            }
        }
    }
    let (old_end, new_end) = (old.len() - suffix, new.len() - suffix);
    steps.extend((0..suffix).map(|k| Step::Same(old_end + k, new_end + k)));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_lines_and_context_as_diff_u_writes_them() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\ni\n";
        // Each expected text is what GNU diffutils 3.8 `diff -u` prints for the same two
        // files, its file-name headers aside.
        let expected = "--- stock\n+++ override\n@@ -2,7 +2,8 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n+i\n";
        assert_eq!(unified(old, new, "stock", "override"), expected);
        assert_eq!(unified(old, old, "stock", "override"), "");
    }

    #[test]
    fn distant_changes_make_separate_hunks_and_empty_ranges_count_from_zero() {
        // As GNU diffutils 3.8 `diff -u` prints them (seq 1 20, two lines changed).
        let old: String = (1..=20).map(|n| format!("{n}\n")).collect();
        let new: String = (1..=20)
            .map(|n| match n {
                2 => "two\n".to_string(),
                19 => "nineteen\n".to_string(),
                n => format!("{n}\n"),
            })
            .collect();
        let diff = unified(&old, &new, "a", "b");
        assert_eq!(diff.matches("@@ -").count(), 2, "{diff}");
        assert!(diff.contains("@@ -1,5 +1,5 @@\n 1\n-2\n+two\n"), "{diff}");
        assert!(diff.contains("@@ -16,5 +16,5 @@\n 16\n 17\n 18\n-19\n+nineteen\n 20\n"), "{diff}");
        assert_eq!(unified("", "x\n", "a", "b"), "--- a\n+++ b\n@@ -0,0 +1 @@\n+x\n");
        assert_eq!(unified("x\n", "", "a", "b"), "--- a\n+++ b\n@@ -1 +0,0 @@\n-x\n");
    }

    #[test]
    fn texts_too_large_for_the_table_show_as_replaced() {
        let old: String = (0..3000).map(|n| format!("old {n}\n")).collect();
        let new: String = (0..3000).map(|n| format!("new {n}\n")).collect();
        let diff = unified(&old, &new, "a", "b");
        assert!(diff.starts_with("--- a\n+++ b\n@@ -1,3000 +1,3000 @@\n-old 0\n"), "{}", &diff[..60]);
        assert_eq!(diff.lines().filter(|l| l.starts_with('-') && !l.starts_with("---")).count(), 3000);
    }
}
