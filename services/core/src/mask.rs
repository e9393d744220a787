//! Hiding secrets in text that leaves the process (events, logs, API
//! answers): every occurrence of every secret becomes `***`.

/// Replaces secrets with `***`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    secrets: Vec<Vec<u8>>,
}

impl Masker {
    /// Empty strings are ignored.
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Self {
        let mut secrets: Vec<Vec<u8>> = secrets
            .iter()
            .map(|s| s.as_ref().as_bytes().to_vec())
            .filter(|s| !s.is_empty())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { secrets }
    }

    /// The length of the longest secret: how much of a cut-off text a
    /// secret can hide in.
    pub fn longest(&self) -> usize {
        self.secrets.first().map_or(0, Vec::len)
    }

    /// `text` with every occurrence of every secret replaced with `***`.
    pub fn mask(&self, text: &str) -> String {
        if self.secrets.is_empty() {
            return text.to_owned();
        }
        String::from_utf8_lossy(&self.mask_bytes(text.as_bytes(), 0)).into_owned()
    }

    /// Masks `bytes`, leaving out the first `skip` bytes (a secret that
    /// starts in them is still masked where it goes on).
    pub fn mask_bytes(&self, bytes: &[u8], skip: usize) -> Vec<u8> {
        let mut hidden = vec![false; bytes.len()];
        for s in &self.secrets {
            if s.len() > bytes.len() {
                continue;
            }
            for i in 0..=bytes.len() - s.len() {
                if bytes[i..].starts_with(s) {
                    hidden[i..i + s.len()].iter_mut().for_each(|h| *h = true);
                }
            }
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut in_secret = false;
        for (i, &b) in bytes.iter().enumerate().skip(skip) {
            if hidden[i] {
                if !in_secret {
                    out.extend_from_slice(b"***");
                }
                in_secret = true;
            } else {
                in_secret = false;
                out.push(b);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_longest_first() {
        let m = Masker::new(&["s3cret", "s3cret-longer", ""]);
        assert_eq!(
            m.mask("a s3cret b s3cret-longer c s3cre"),
            "a *** b *** c s3cre"
        );
        assert_eq!(Masker::new::<&str>(&[]).mask("x"), "x");
    }

    #[test]
    fn adjacent_secrets_make_one_mask() {
        let m = Masker::new(&["ab"]);
        assert_eq!(m.mask("xababy"), "x***y");
    }
}
