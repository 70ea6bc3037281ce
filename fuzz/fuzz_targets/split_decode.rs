//! Arbitrary bytes, cut at fuzzer-chosen points, fed through `FrameReader`
//! exactly as the server feeds it (keep the tail `buf[consumed..]`, append the
//! next read, decode again), compared with decoding the uncut stream.
//!
//! Input layout (so the fuzzer controls the limit and the cuts):
//! - bytes 0..2: the limit. High bit set: the default 16384; otherwise
//!   64 + (value % 1024), small enough for `frame-too-large` to be reachable.
//! - byte 2: how many cut lengths follow (mod 33).
//! - that many bytes: read lengths, each `byte + 1`, used in turn until the
//!   stream is exhausted (none: one read).
//! - the rest: the stream.
//!
//! Invariants (a violation panics, which libFuzzer reports as a crash):
//! - the decoder never panics;
//! - `consumed()` never goes backwards or past the buffer;
//! - the tail kept after a read is at most `max_frame` bytes (the server's
//!   `inbound` holds it, so this bounds per-connection memory at
//!   `max_frame` + one read);
//! - the cut stream yields the same frames as the uncut one and fails if and
//!   only if the uncut one fails, with the same error code unless either is
//!   `frame-too-large` (a stream can outgrow the limit before the byte that
//!   makes it malformed arrives).
//!
//! `FUZZ_SKIP_KNOWN=1` skips every input holding a UTF-8 byte order mark. It
//! was written to look past bugs 1 and 3 of RELIABILITY.md while they were
//! open; both are fixed, so today it only narrows a run.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lifeline_wire::{Decoded, FrameReader, StreamPosition};

const DEFAULT_MAX_FRAME: usize = 16384;
const MIN_MAX_FRAME: usize = 64;
const MAX_CUTS: usize = 32;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// Each frame's `Debug` text: the frames borrow from a buffer that the
    /// next read replaces, so they are compared by value.
    frames: Vec<String>,
    error: Option<&'static str>,
}

const BOM: &[u8] = b"\xef\xbb\xbf";

fn skip_known() -> bool {
    static SKIP: OnceLock<bool> = OnceLock::new();
    *SKIP.get_or_init(|| std::env::var_os("FUZZ_SKIP_KNOWN").is_some_and(|v| v == "1"))
}

fn decode(pieces: &[&[u8]], max_frame: usize) -> Outcome {
    let mut tail: Vec<u8> = Vec::new();
    let mut position = StreamPosition::Start;
    let mut frames = Vec::new();
    for piece in pieces {
        tail.extend_from_slice(piece);
        let mut reader = FrameReader::new(&tail, max_frame, position);
        let mut last = 0;
        loop {
            let decoded = reader.next_frame();
            let consumed = reader.consumed();
            assert!(
                last <= consumed && consumed <= tail.len(),
                "consumed went from {last} to {consumed} in {} bytes",
                tail.len()
            );
            last = consumed;
            match decoded {
                Ok(Decoded::Frame(frame)) => frames.push(format!("{frame:?}")),
                Ok(Decoded::NeedMore) => break,
                Err(e) => {
                    return Outcome {
                        frames,
                        error: Some(e.code().as_str()),
                    }
                }
            }
        }
        position = reader.position();
        let consumed = reader.consumed();
        tail.drain(..consumed);
        assert!(
            tail.len() <= max_frame,
            "tail of {} bytes kept with max_frame {max_frame}",
            tail.len()
        );
    }
    Outcome {
        frames,
        error: None,
    }
}

fn check(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let selector = u16::from_le_bytes([data[0], data[1]]);
    let max_frame = if selector & 0x8000 != 0 {
        DEFAULT_MAX_FRAME
    } else {
        MIN_MAX_FRAME + usize::from(selector) % 1024
    };
    let cut_count = usize::from(data[2]) % (MAX_CUTS + 1);
    let rest = &data[3..];
    let (lengths, stream) = rest.split_at(cut_count.min(rest.len()));

    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut next = lengths.iter().cycle();
    while start < stream.len() {
        let len = match next.next() {
            Some(&b) => usize::from(b) + 1,
            None => stream.len(),
        };
        let end = (start + len).min(stream.len());
        pieces.push(&stream[start..end]);
        start = end;
    }

    if skip_known() && stream.windows(BOM.len()).any(|w| w == BOM) {
        return;
    }
    let whole = decode(&[stream], max_frame);
    let split = decode(&pieces, max_frame);
    let lossy = String::from_utf8_lossy(stream);
    assert_eq!(
        split.frames, whole.frames,
        "frames differ; max_frame {max_frame}, stream {lossy:?}, pieces {pieces:?}"
    );
    assert_eq!(
        split.error.is_some(),
        whole.error.is_some(),
        "verdict differs: whole {:?}, split {:?}; max_frame {max_frame}, stream {lossy:?}, pieces {pieces:?}",
        whole.error,
        split.error
    );
    if whole.error != Some("frame-too-large") && split.error != Some("frame-too-large") {
        assert_eq!(
            split.error, whole.error,
            "error differs; max_frame {max_frame}, stream {lossy:?}, pieces {pieces:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| check(data));
