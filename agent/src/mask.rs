//! Masking of sensitive parameter values in what a job leaves behind.
//!
//! A child gets its parameters as `BATON_PARAM_*`, sensitive ones included, and may
//! print them (`set -x`, `env`, a verbose client). Everything the agent keeps or sends
//! from a job — the `stdout.log` / `stderr.log` files, the output tails and outputs of
//! the finished event (durable in the outbox, then in the coordinator's store) and the
//! failure reason — goes through a [`Masker`] first, which replaces each sensitive
//! value with [`MASK`] (as CI systems do with secrets). Values are matched as bytes,
//! exactly; an encoded form (base64, URL-escaped) is not recognised.

use std::sync::Arc;

/// What a masked value is replaced with.
pub const MASK: &str = "***";

/// The sensitive values of one job; cheap to clone.
#[derive(Clone, Default)]
pub struct Masker {
    /// Longest first, so that a value that extends another is masked whole.
    secrets: Arc<[Vec<u8>]>,
}

/// Never shows the values.
impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("values", &self.secrets.len())
            .finish()
    }
}

impl Masker {
    /// Masks every non-empty value; a multi-line value is also masked line by line
    /// (a tool may print it one line at a time).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Masker {
        let mut secrets: Vec<Vec<u8>> = Vec::new();
        for v in values {
            secrets.push(v.as_bytes().to_vec());
            if v.contains('\n') {
                secrets.extend(
                    v.lines()
                        .map(|l| l.trim_end_matches('\r'))
                        .map(|l| l.as_bytes().to_vec()),
                );
            }
        }
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Masker {
            secrets: secrets.into(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// A whole string, masked.
    pub fn mask_str(&self, s: &str) -> String {
        if self.is_empty() {
            return s.to_string();
        }
        let mut stream = self.stream();
        let mut out = stream.feed(s.as_bytes());
        out.extend(stream.finish());
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A streaming masker for output that arrives in chunks: a value split across two
    /// chunks is still masked.
    pub fn stream(&self) -> MaskStream {
        MaskStream {
            masker: self.clone(),
            pending: Vec::new(),
        }
    }

    /// Masks from the start of `pending`; returns how many bytes were consumed. When
    /// not `last`, stops at a position where a value might begin but has not fully
    /// arrived yet (those bytes wait for the next chunk).
    fn scan(&self, pending: &[u8], out: &mut Vec<u8>, last: bool) -> usize {
        let mut i = 0;
        'bytes: while i < pending.len() {
            let rest = &pending[i..];
            for s in self.secrets.iter() {
                if rest.starts_with(s) {
                    out.extend_from_slice(MASK.as_bytes());
                    i += s.len();
                    continue 'bytes;
                }
            }
            if !last
                && self
                    .secrets
                    .iter()
                    .any(|s| s.len() > rest.len() && s.starts_with(rest))
            {
                break;
            }
            out.push(pending[i]);
            i += 1;
        }
        i
    }
}

/// See [`Masker::stream`].
pub struct MaskStream {
    masker: Masker,
    pending: Vec<u8>,
}

impl MaskStream {
    /// The masked bytes that can be released now.
    pub fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        if self.masker.is_empty() {
            return data.to_vec();
        }
        self.pending.extend_from_slice(data);
        let mut out = Vec::with_capacity(self.pending.len());
        let used = self.masker.scan(&self.pending, &mut out, false);
        self.pending.drain(..used);
        out
    }

    /// The rest, at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pending.len());
        let used = self.masker.scan(&self.pending, &mut out, true);
        self.pending.drain(..used);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_values_anywhere_in_a_string() {
        let m = Masker::new(["hunter2", "", "s3cr3t"]);
        assert_eq!(
            m.mask_str("pw=hunter2 and hunter2s3cr3t."),
            "pw=*** and ******."
        );
        assert_eq!(m.mask_str("nothing here"), "nothing here");
        assert_eq!(Masker::new([""]).mask_str("abc"), "abc");
        assert!(!format!("{m:?}").contains("hunter2"));
    }

    #[test]
    fn longer_value_wins_over_its_prefix() {
        let m = Masker::new(["abc", "abcdef"]);
        assert_eq!(m.mask_str("xabcdefx abcx"), "x***x ***x");
    }

    #[test]
    fn multi_line_values_are_masked_whole_and_per_line() {
        let m = Masker::new(["line-one\r\nline-two"]);
        assert_eq!(m.mask_str("a line-one\r\nline-two b"), "a *** b");
        assert_eq!(m.mask_str("+ echo line-two"), "+ echo ***");
    }

    #[test]
    fn a_value_split_across_chunks_is_masked() {
        let m = Masker::new(["hunter2"]);
        let text = b"export PW=hunter2; echo hunter2 huntex hunter";
        for split in 1..text.len() {
            let mut s = m.stream();
            let mut out = s.feed(&text[..split]);
            out.extend(s.feed(&text[split..]));
            out.extend(s.finish());
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "export PW=***; echo *** huntex hunter",
                "split at {split}"
            );
        }
        // Byte by byte, too.
        let mut s = m.stream();
        let mut out = Vec::new();
        for b in text {
            out.extend(s.feed(&[*b]));
        }
        out.extend(s.finish());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "export PW=***; echo *** huntex hunter"
        );
    }

    #[test]
    fn nothing_to_mask_passes_through() {
        let m = Masker::default();
        let mut s = m.stream();
        assert_eq!(s.feed(b"abc"), b"abc");
        assert!(s.finish().is_empty());
    }
}
