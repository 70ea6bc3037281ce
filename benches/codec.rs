//! Frame codec: parse + reply for a ping, a 1 KiB msg, and a mixed stream cut
//! at random boundaries (the server's keep-the-tail path).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lifeline_wire::{self as wire, Decoded, Frame, FrameReader, StreamPosition};
use std::hint::black_box;

const MAX_FRAME: usize = 16384;

fn serve(buf: &[u8], seen: bool, out: &mut Vec<u8>) -> (usize, usize) {
    let position = if seen {
        StreamPosition::AfterFrame
    } else {
        StreamPosition::Start
    };
    let mut reader = FrameReader::new(buf, MAX_FRAME, position);
    let mut frames = 0;
    while let Ok(Decoded::Frame(frame)) = reader.next_frame() {
        frames += 1;
        match frame {
            Frame::Ping { seq } => wire::encode_pong(out, seq),
            Frame::Msg { to, id, body } => wire::encode_msg(out, to, id, body),
            _ => {}
        }
    }
    (frames, reader.consumed())
}

/// A small deterministic generator, so every run cuts the stream the same way.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    let mut out = Vec::with_capacity(1 << 20);

    let ping = b"<heartbeat mode=\"ping\" seq=\"123456\"/>";
    group.throughput(Throughput::Elements(1));
    group.bench_function("ping_parse_and_pong", |b| {
        b.iter(|| {
            out.clear();
            black_box(serve(black_box(ping), true, &mut out))
        })
    });

    let msg = format!("<msg to=\"bob\" id=\"m-1\">{}</msg>", "x".repeat(1024));
    group.bench_function("msg_1KiB_parse_and_forward", |b| {
        b.iter(|| {
            out.clear();
            black_box(serve(black_box(msg.as_bytes()), true, &mut out))
        })
    });

    let mut stream = String::new();
    for i in 0..300 {
        match i % 3 {
            0 => stream.push_str(&format!("<heartbeat mode=\"ping\" seq=\"{i}\"/>\n")),
            1 => stream.push_str(&format!(
                "<msg to=\"u{i}\" id=\"m{i}\">hello &amp; {i}</msg>"
            )),
            _ => stream.push_str("<ack id=\"m1\"/> "),
        }
    }
    let bytes = stream.as_bytes();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut cuts: Vec<usize> = (0..150)
        .map(|_| (xorshift(&mut seed) as usize) % bytes.len())
        .collect();
    cuts.sort_unstable();
    cuts.push(bytes.len());
    group.throughput(Throughput::Elements(300));
    group.bench_function(
        BenchmarkId::new("stream_cut_randomly", "300_frames_151_pieces"),
        |b| {
            let mut tail: Vec<u8> = Vec::with_capacity(MAX_FRAME);
            b.iter(|| {
                out.clear();
                tail.clear();
                let (mut start, mut seen, mut frames) = (0, false, 0);
                for &cut in &cuts {
                    tail.extend_from_slice(&bytes[start..cut]);
                    start = cut;
                    let (n, consumed) = serve(&tail, seen, &mut out);
                    frames += n;
                    seen |= n > 0;
                    tail.drain(..consumed);
                }
                assert_eq!(frames, 300);
                black_box(frames)
            })
        },
    );
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
