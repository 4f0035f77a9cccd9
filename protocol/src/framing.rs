//! JSON Lines framing: one message per line, ended by `\n`.
//!
//! A `LineBuffer` collects bytes as they arrive from a nonblocking socket and
//! hands out complete lines. "Need more bytes" is not an error: it is simply no
//! line yet. A line longer than the limit is an error the caller answers with
//! `MESSAGE_TOO_LARGE` before closing the connection; the buffer never holds
//! more than the limit plus one read.

/// The default longest line accepted, newline excluded: 1 MiB.
pub const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Where the next line starts in `buf`.
    start: usize,
    /// How far `buf[start..]` has been searched for a newline.
    scanned: usize,
    max_line_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong {
    pub limit: usize,
}

impl LineBuffer {
    pub fn new(max_line_bytes: usize) -> LineBuffer {
        LineBuffer {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max_line_bytes,
        }
    }

    /// Appends bytes read from the connection.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.scanned = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line, without its `\n` (and without a `\r` before
    /// it). `None` if no complete line is buffered yet.
    pub fn next_line(&mut self) -> Option<Result<&[u8], LineTooLong>> {
        let pending = &self.buf[self.start + self.scanned..];
        match memchr::memchr(b'\n', pending) {
            Some(at) => {
                let line_start = self.start;
                let line_end = self.start + self.scanned + at;
                self.start = line_end + 1;
                self.scanned = 0;
                if line_end - line_start > self.max_line_bytes {
                    return Some(Err(LineTooLong {
                        limit: self.max_line_bytes,
                    }));
                }
                let mut line = &self.buf[line_start..line_end];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                Some(Ok(line))
            }
            None => {
                self.scanned = self.buf.len() - self.start;
                if self.scanned > self.max_line_bytes {
                    return Some(Err(LineTooLong {
                        limit: self.max_line_bytes,
                    }));
                }
                self.compact();
                None
            }
        }
    }

    /// Bytes buffered that are not yet part of a complete line.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len() - self.start
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(buf: &mut LineBuffer) -> Vec<Result<String, LineTooLong>> {
        let mut out = Vec::new();
        while let Some(l) = buf.next_line() {
            let stop = l.is_err();
            out.push(l.map(|b| String::from_utf8_lossy(b).into_owned()));
            if stop {
                break;
            }
        }
        out
    }

    #[test]
    fn splits_lines_across_reads_and_keeps_partial_ones() {
        let mut b = LineBuffer::new(100);
        b.extend(b"{\"a\":1}\n{\"b\"");
        assert_eq!(lines(&mut b), vec![Ok("{\"a\":1}".to_string())]);
        assert_eq!(b.pending_bytes(), 4);
        b.extend(b":2}\r\n\n");
        assert_eq!(
            lines(&mut b),
            vec![Ok("{\"b\":2}".to_string()), Ok(String::new())]
        );
        assert_eq!(b.pending_bytes(), 0);
    }

    #[test]
    fn a_line_over_the_limit_is_reported_even_before_its_newline_arrives() {
        let mut b = LineBuffer::new(8);
        b.extend(b"123456789");
        assert_eq!(lines(&mut b), vec![Err(LineTooLong { limit: 8 })]);
        let mut b = LineBuffer::new(8);
        b.extend(b"12345678\n123456789\n");
        assert_eq!(
            lines(&mut b),
            vec![Ok("12345678".to_string()), Err(LineTooLong { limit: 8 })]
        );
    }

    #[test]
    fn byte_at_a_time_delivery_gives_the_same_lines() {
        let input = b"one\ntwo\nthree\n";
        let mut b = LineBuffer::new(64);
        let mut got = Vec::new();
        for &byte in input.iter() {
            b.extend(&[byte]);
            got.extend(lines(&mut b));
        }
        let want: Vec<Result<String, LineTooLong>> = ["one", "two", "three"]
            .iter()
            .map(|s| Ok(s.to_string()))
            .collect();
        assert_eq!(got, want);
    }
}
