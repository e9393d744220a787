//! Line diff (Myers' O(ND) algorithm) and unified-diff output.

use crate::secrets::MASK;

/// One step of an edit script, with 0-based line indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Line `.0` of the old text is line `.1` of the new one.
    Equal(usize, usize),
    /// Line `.0` of the old text is gone.
    Delete(usize),
    /// Line `.0` of the new text is new.
    Insert(usize),
}

/// Beyond this many inserted + deleted lines (after the common prefix and
/// suffix are set aside), the differing middle is shown as one block
/// replacement instead of a minimal script: time and memory stay bounded.
const MAX_EDIT_DISTANCE: usize = 1000;

/// A shortest edit script from `a` to `b` (deletions before insertions in
/// each changed block).
pub(crate) fn diff<T: PartialEq>(a: &[T], b: &[T]) -> Vec<Op> {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let am = &a[prefix..a.len() - suffix];
    let bm = &b[prefix..b.len() - suffix];
    let mut ops = Vec::with_capacity(a.len().max(b.len()));
    ops.extend((0..prefix).map(|i| Op::Equal(i, i)));
    if !am.is_empty() || !bm.is_empty() {
        match myers(am, bm, MAX_EDIT_DISTANCE) {
            Some(mid) => ops.extend(mid.into_iter().map(|op| match op {
                Op::Equal(i, j) => Op::Equal(i + prefix, j + prefix),
                Op::Delete(i) => Op::Delete(i + prefix),
                Op::Insert(j) => Op::Insert(j + prefix),
            })),
            None => {
                ops.extend((0..am.len()).map(|i| Op::Delete(prefix + i)));
                ops.extend((0..bm.len()).map(|j| Op::Insert(prefix + j)));
            }
        }
    }
    ops.extend((0..suffix).map(|i| Op::Equal(a.len() - suffix + i, b.len() - suffix + i)));
    ops
}

/// Myers' greedy forward search, keeping each round's frontier for the
/// backtrack. `None` when the edit distance exceeds `limit`.
fn myers<T: PartialEq>(a: &[T], b: &[T], limit: usize) -> Option<Vec<Op>> {
    let n = a.len() as isize;
    let m = b.len() as isize;
    let max = (n + m).min(limit as isize);
    let off = max + 1;
    let mut v = vec![0isize; (2 * off + 1) as usize];
    // trace[d] = v[k] for k in -d-1..=d+1, as it was before round d.
    let mut trace: Vec<Vec<isize>> = Vec::new();
    for d in 0..=max {
        trace.push(v[(off - d - 1) as usize..=(off + d + 1) as usize].to_vec());
        let mut k = -d;
        while k <= d {
            let i = (off + k) as usize;
            let mut x = if k == -d || (k != d && v[i - 1] < v[i + 1]) {
                v[i + 1]
            } else {
                v[i - 1] + 1
            };
            let mut y = x - k;
            while x < n && y < m && a[x as usize] == b[y as usize] {
                x += 1;
                y += 1;
            }
            v[i] = x;
            if x >= n && y >= m {
                return Some(backtrack(&trace, n, m));
            }
            k += 2;
        }
    }
    None
}

fn backtrack(trace: &[Vec<isize>], n: isize, m: isize) -> Vec<Op> {
    let mut ops = Vec::new();
    let (mut x, mut y) = (n, m);
    for (d, v) in trace.iter().enumerate().rev() {
        let d = d as isize;
        let at = |k: isize| v[(k + d + 1) as usize];
        let k = x - y;
        let prev_k = if k == -d || (k != d && at(k - 1) < at(k + 1)) {
            k + 1
        } else {
            k - 1
        };
        let prev_x = at(prev_k);
        let prev_y = prev_x - prev_k;
        while x > prev_x && y > prev_y {
            x -= 1;
            y -= 1;
            ops.push(Op::Equal(x as usize, y as usize));
        }
        if d > 0 {
            if x == prev_x {
                ops.push(Op::Insert((y - 1) as usize));
            } else {
                ops.push(Op::Delete((x - 1) as usize));
            }
        }
        x = prev_x;
        y = prev_y;
    }
    ops.reverse();
    ops
}

/// One side of a text diff, as shown.
pub(crate) struct Shown<'a> {
    /// `--- a/path`, `+++ b/path` or `/dev/null`.
    pub label: &'a str,
    /// Each line as displayed (masked, without its line end).
    pub lines: &'a [String],
    /// The last line has no line end.
    pub missing_eol: bool,
}

/// Unified diff body of `ops`, with `context` lines around changes, the
/// `---`/`+++` header first. At most `max_lines` lines after the header; the
/// bool tells whether lines were left out. `None` when nothing changed.
pub(crate) fn unified(
    ops: &[Op],
    old: &Shown<'_>,
    new: &Shown<'_>,
    context: usize,
    max_lines: usize,
) -> Option<(String, bool)> {
    let changes: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| !matches!(op, Op::Equal(..)))
        .map(|(i, _)| i)
        .collect();
    if changes.is_empty() {
        return None;
    }
    // Hunks as op ranges; hunks whose context would touch are merged.
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &c in &changes {
        let start = c.saturating_sub(context);
        let end = (c + 1 + context).min(ops.len());
        match hunks.last_mut() {
            Some(last) if start <= last.1 => last.1 = end,
            _ => hunks.push((start, end)),
        }
    }
    // Old/new line positions before each op.
    let mut before = Vec::with_capacity(ops.len());
    let (mut a, mut b) = (0usize, 0usize);
    for op in ops {
        before.push((a, b));
        match op {
            Op::Equal(..) => {
                a += 1;
                b += 1;
            }
            Op::Delete(_) => a += 1,
            Op::Insert(_) => b += 1,
        }
    }
    let last_old = old.lines.len().checked_sub(1);
    let last_new = new.lines.len().checked_sub(1);
    const NO_EOL: &str = "\\ No newline at end of file";

    let mut body: Vec<String> = Vec::new();
    for (start, end) in hunks {
        let slice = &ops[start..end];
        let a_count = slice
            .iter()
            .filter(|op| !matches!(op, Op::Insert(_)))
            .count();
        let b_count = slice
            .iter()
            .filter(|op| !matches!(op, Op::Delete(_)))
            .count();
        let (a0, b0) = before[start];
        body.push(format!(
            "@@ -{} +{} @@",
            range(a0, a_count),
            range(b0, b_count)
        ));
        for op in slice {
            match *op {
                Op::Equal(i, j) => {
                    body.push(format!(" {}", more_masked(&old.lines[i], &new.lines[j])));
                    if Some(i) == last_old && old.missing_eol {
                        body.push(NO_EOL.to_string());
                    }
                }
                Op::Delete(i) => {
                    body.push(format!("-{}", old.lines[i]));
                    if Some(i) == last_old && old.missing_eol {
                        body.push(NO_EOL.to_string());
                    }
                }
                Op::Insert(j) => {
                    body.push(format!("+{}", new.lines[j]));
                    if Some(j) == last_new && new.missing_eol {
                        body.push(NO_EOL.to_string());
                    }
                }
            }
        }
    }
    let mut out = format!("--- {}\n+++ {}\n", old.label, new.label);
    let truncated = body.len() > max_lines;
    let shown = body.len().min(max_lines);
    for line in &body[..shown] {
        out.push_str(line);
        out.push('\n');
    }
    if truncated {
        out.push_str(&format!(
            "... diff truncated: {} more line(s) not shown\n",
            body.len() - shown
        ));
    }
    Some((out, truncated))
}

/// `start,count` as unified diffs write it (`,1` left out; an empty range
/// names the line before it).
fn range(before: usize, count: usize) -> String {
    match count {
        0 => format!("{before},0"),
        1 => format!("{}", before + 1),
        n => format!("{},{n}", before + 1),
    }
}

/// An unchanged line may be masked differently on each side (masking follows
/// the file's structure): show the more masked one.
fn more_masked<'a>(old: &'a str, new: &'a str) -> &'a str {
    if new.matches(MASK).count() > old.matches(MASK).count() {
        new
    } else {
        old
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(a: &[&str], b: &[&str], ops: &[Op]) -> (Vec<String>, Vec<String>) {
        let mut old = Vec::new();
        let mut new = Vec::new();
        for op in ops {
            match *op {
                Op::Equal(i, j) => {
                    assert_eq!(a[i], b[j]);
                    old.push(a[i].to_string());
                    new.push(b[j].to_string());
                }
                Op::Delete(i) => old.push(a[i].to_string()),
                Op::Insert(j) => new.push(b[j].to_string()),
            }
        }
        (old, new)
    }

    fn edits(ops: &[Op]) -> usize {
        ops.iter().filter(|o| !matches!(o, Op::Equal(..))).count()
    }

    #[test]
    fn diff_myers_is_minimal_and_consistent() {
        let cases: [(&str, &str, usize); 6] = [
            ("abcabba", "cbabac", 5),
            ("", "abc", 3),
            ("abc", "", 3),
            ("abc", "abc", 0),
            ("axbxc", "aybyc", 4),
            ("abcdef", "abXdef", 2),
        ];
        for (a, b, d) in cases {
            let a: Vec<String> = a.chars().map(String::from).collect();
            let b: Vec<String> = b.chars().map(String::from).collect();
            let ar: Vec<&str> = a.iter().map(String::as_str).collect();
            let br: Vec<&str> = b.iter().map(String::as_str).collect();
            let ops = diff(&ar, &br);
            let (old, new) = apply(&ar, &br, &ops);
            assert_eq!(old, a);
            assert_eq!(new, b);
            assert_eq!(edits(&ops), d, "{a:?} -> {b:?}");
        }
    }

    #[test]
    fn diff_falls_back_beyond_the_limit() {
        let a: Vec<usize> = (0..3000).collect();
        let b: Vec<usize> = (0..3000).map(|i| i + 10_000).collect();
        let ops = diff(&a, &b);
        assert_eq!(edits(&ops), 6000);
        assert!(matches!(ops[0], Op::Delete(0)));
        assert!(matches!(ops[3000], Op::Insert(0)));
    }
}
