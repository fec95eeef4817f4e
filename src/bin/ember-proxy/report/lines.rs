//! The log read line by line with a bound on a line's length, so one endless line (a
//! truncated file, the wrong file) costs [`MAX_LINE`] bytes of memory and a skipped line,
//! never the machine.

use std::io::{self, BufRead};

/// The longest line read; a longer one is skipped whole.
pub const MAX_LINE: usize = 1 << 20;

/// One line of the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// Its bytes, without the line end (`\n` or `\r\n`).
    Read(&'a [u8]),
    /// Longer than [`MAX_LINE`]: its bytes were passed over.
    TooLong,
}

/// Calls `each` with every line of `input`, the last one whether or not it ends in `\n`.
pub fn for_each_line(mut input: impl BufRead, mut each: impl FnMut(Line<'_>)) -> io::Result<()> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let (used, ended) = {
            let buf = match input.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                if too_long {
                    each(Line::TooLong);
                } else if !line.is_empty() {
                    each(Line::Read(trim_cr(&line)));
                }
                return Ok(());
            }
            let end = buf.iter().position(|&b| b == b'\n');
            let chunk = &buf[..end.unwrap_or(buf.len())];
            if !too_long {
                if line.len() + chunk.len() > MAX_LINE {
                    too_long = true;
                    line.clear();
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            (end.map_or(buf.len(), |at| at + 1), end.is_some())
        };
        input.consume(used);
        if ended {
            if too_long {
                each(Line::TooLong);
            } else {
                each(Line::Read(trim_cr(&line)));
            }
            line.clear();
            too_long = false;
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    fn lines(input: &[u8], capacity: usize) -> Vec<Option<Vec<u8>>> {
        let mut out = Vec::new();
        for_each_line(BufReader::with_capacity(capacity, input), |line| {
            out.push(match line {
                Line::Read(bytes) => Some(bytes.to_vec()),
                Line::TooLong => None,
            })
        })
        .expect("reading from memory");
        out
    }

    #[test]
    fn report_lines_are_split_on_newlines_across_buffer_edges() {
        for capacity in [1, 3, 64] {
            assert_eq!(
                lines(b"one\r\n\ntwo\nthree", capacity),
                [
                    Some(b"one".to_vec()),
                    Some(Vec::new()),
                    Some(b"two".to_vec()),
                    Some(b"three".to_vec())
                ]
            );
        }
        assert!(lines(b"", 8).is_empty());
        assert_eq!(lines(b"a\n", 8), [Some(b"a".to_vec())]);
    }

    #[test]
    fn report_lines_longer_than_the_bound_are_passed_over() {
        let mut input = vec![b'x'; MAX_LINE + 10];
        input.extend_from_slice(b"\nafter\n");
        input.extend(vec![b'y'; MAX_LINE + 1]);
        assert_eq!(lines(&input, 8192), [None, Some(b"after".to_vec()), None]);
    }
}
