//! Script output with bounded memory: lines are cut at [`MAX_LINE`] bytes (a gigabyte
//! without a newline costs no more than one long line), and only the last lines are kept.

use std::collections::VecDeque;

/// Longest line kept; the rest of a longer line is dropped and the cut is marked.
pub const MAX_LINE: usize = 4096;
const CUT_MARK: &str = " [...line cut]";

/// Splits a byte stream into lines.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    cut: bool,
}

impl LineSplitter {
    pub fn feed(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&str)) {
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.take(&bytes[..i]);
                    self.flush(&mut emit);
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.take(bytes);
                    break;
                }
            }
        }
    }

    /// Emits a last line that had no newline.
    pub fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.partial.is_empty() || self.cut {
            self.flush(&mut emit);
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        let room = MAX_LINE - self.partial.len();
        if bytes.len() > room {
            self.partial.extend_from_slice(&bytes[..room]);
            self.cut = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    fn flush(&mut self, emit: &mut impl FnMut(&str)) {
        if self.partial.last() == Some(&b'\r') {
            self.partial.pop();
        }
        let mut line = String::from_utf8_lossy(&self.partial).into_owned();
        if self.cut {
            line.push_str(CUT_MARK);
        }
        emit(&line);
        self.partial.clear();
        self.cut = false;
    }
}

/// The last `capacity` lines of a run.
#[derive(Debug, Clone)]
pub struct Tail {
    lines: VecDeque<String>,
    capacity: usize,
}

impl Tail {
    pub fn new(capacity: usize) -> Self {
        Tail {
            lines: VecDeque::with_capacity(capacity.min(64)),
            capacity: capacity.max(1),
        }
    }

    pub fn push(&mut self, line: &str) {
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_owned());
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |l| out.push(l.to_owned()));
        }
        s.finish(|l| out.push(l.to_owned()));
        out
    }

    #[test]
    fn splits_across_chunks_and_keeps_the_unterminated_tail() {
        assert_eq!(split(&[b"a\nb", b"c\r\n", b"d"]), ["a", "bc", "d"]);
        assert_eq!(split(&[b"\n\n"]), ["", ""]);
    }

    #[test]
    fn cuts_long_lines_without_growing() {
        let long = vec![b'x'; MAX_LINE * 3];
        let out = split(&[&long, &long, b"\nnext\n"]);
        assert_eq!(out.len(), 2);
        assert!(out[0].ends_with(CUT_MARK));
        assert_eq!(out[0].len(), MAX_LINE + CUT_MARK.len());
        assert_eq!(out[1], "next");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let mut t = Tail::new(2);
        for l in ["1", "2", "3"] {
            t.push(l);
        }
        assert_eq!(t.lines(), ["2", "3"]);
    }
}
