//! `Transfer-Encoding: chunked` request bodies, decoded as they arrive: the
//! decoder keeps its place between reads, so every byte is looked at once
//! however the body is cut, and the decoded body is bounded like any other.

use crate::http::HttpError;

/// Longest chunk-size line (size, extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Step {
    /// Hex digits of a chunk size (`digits` read so far).
    #[default]
    Size,
    /// After the size: optional whitespace and `;extension`s, up to CR.
    Extension,
    /// The LF of a chunk-size line.
    SizeLf,
    /// Chunk data still to come.
    Data,
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// After the last (zero) chunk: a trailer line starts, or the final CRLF.
    TrailerStart,
    /// Inside a trailer field line, up to its CR.
    Trailer,
    TrailerLf,
    /// The final LF: then the body is done.
    EndLf,
    Done,
}

/// Decodes one chunked body, fed in pieces.
#[derive(Debug, Clone, Default)]
pub struct ChunkedDecoder {
    step: Step,
    /// The chunk size being read, then the data left of the chunk.
    size: u64,
    digits: usize,
    /// Bytes of the current size line or trailer line.
    line: usize,
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    /// Decodes what `input` holds into `body`. Returns how many bytes of
    /// `input` were used: all of them, or those up to the end of the body.
    /// A body that would pass `max_body` bytes is refused as soon as its
    /// chunk size says so.
    pub fn feed(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        max_body: usize,
    ) -> Result<usize, HttpError> {
        let bad = HttpError::Malformed;
        let mut i = 0;
        while i < input.len() && self.step != Step::Done {
            let b = input[i];
            match self.step {
                Step::Size => match (b as char).to_digit(16) {
                    Some(d) => {
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(bad("chunk size too long"));
                        }
                        self.size = self.size * 16 + u64::from(d);
                    }
                    None if self.digits == 0 => return Err(bad("chunk size is not hex")),
                    None => {
                        if body.len() as u64 + self.size > max_body as u64 {
                            return Err(HttpError::BodyTooLarge { max: max_body });
                        }
                        self.step = Step::Extension;
                        continue; // the byte is the extension step's
                    }
                },
                Step::Extension => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(bad("chunk extension too long"));
                    }
                    match b {
                        b'\r' => self.step = Step::SizeLf,
                        b'\n' => return Err(bad("chunk size line not ended by CRLF")),
                        _ => {}
                    }
                }
                Step::SizeLf => {
                    if b != b'\n' {
                        return Err(bad("chunk size line not ended by CRLF"));
                    }
                    self.line = 0;
                    self.digits = 0;
                    self.step = if self.size == 0 {
                        Step::TrailerStart
                    } else {
                        Step::Data
                    };
                }
                Step::Data => {
                    let take = (input.len() - i).min(self.size as usize);
                    body.extend_from_slice(&input[i..i + take]);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.step = Step::DataCr;
                    }
                    continue;
                }
                Step::DataCr if b == b'\r' => self.step = Step::DataLf,
                Step::DataLf if b == b'\n' => self.step = Step::Size,
                Step::DataCr | Step::DataLf => return Err(bad("chunk data not followed by CRLF")),
                Step::TrailerStart => {
                    self.step = if b == b'\r' {
                        Step::EndLf
                    } else {
                        self.line = 1;
                        Step::Trailer
                    };
                }
                Step::Trailer => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(bad("trailer line too long"));
                    }
                    match b {
                        b'\r' => self.step = Step::TrailerLf,
                        b'\n' => return Err(bad("trailer line not ended by CRLF")),
                        _ => {}
                    }
                }
                Step::TrailerLf if b == b'\n' => self.step = Step::TrailerStart,
                Step::EndLf if b == b'\n' => self.step = Step::Done,
                Step::TrailerLf | Step::EndLf => return Err(bad("chunked body not ended by CRLF")),
                Step::Done => break,
            }
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(encoded: &[u8], piece: usize) -> Result<(Vec<u8>, usize), HttpError> {
        let mut decoder = ChunkedDecoder::default();
        let mut body = Vec::new();
        let mut used = 0;
        for part in encoded.chunks(piece) {
            used += decoder.feed(part, &mut body, 64)?;
            if decoder.is_done() {
                return Ok((body, used));
            }
        }
        Err(HttpError::Malformed("incomplete"))
    }

    #[test]
    fn bodies_decode_however_they_are_cut() {
        let encoded = b"5;name=value\r\nhello\r\n19\r\n, chunked and split ways!\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for piece in 1..=encoded.len() {
            let (body, used) = decode_in_pieces(encoded, piece).unwrap();
            assert_eq!(body, b"hello, chunked and split ways!", "piece {piece}");
            assert_eq!(used, encoded.len() - 4, "piece {piece}");
        }
        let (body, _) = decode_in_pieces(b"0\r\n\r\n", 1).unwrap();
        assert!(body.is_empty());
    }

    #[test]
    fn malformed_or_oversized_chunking_is_refused() {
        for bad in [
            &b"x\r\nhi\r\n0\r\n\r\n"[..],
            b"2\nhi\r\n0\r\n\r\n",
            b"2\r\nhiX\r\n0\r\n\r\n",
            b"2\r\nhi\r\n0\r\n\n",
            b"1000000000000000\r\n",
        ] {
            assert!(
                matches!(decode_in_pieces(bad, 3), Err(HttpError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            decode_in_pieces(b"41\r\n", 2),
            Err(HttpError::BodyTooLarge { max: 64 })
        );
        assert_eq!(
            decode_in_pieces(b"40\r\n", 2).unwrap_err(),
            HttpError::Malformed("incomplete")
        );
    }
}
