//! MQTT 3.1.1, as much as a keep-alive peer needs: CONNECT, PINGREQ and
//! DISCONNECT out; CONNACK and PINGRESP in (anything else is `Other`). Fan-out
//! mode adds SUBSCRIBE and PUBLISH (QoS 0) out, SUBACK and PUBLISH in.

use super::{Inbound, Scan, ScanError};

/// Fixed-header bytes we send (section 2.2).
const CONNECT: u8 = 0x10;
const PINGREQ: [u8; 2] = [0xC0, 0x00];
const DISCONNECT: [u8; 2] = [0xE0, 0x00];
/// SUBSCRIBE carries the reserved flags 0b0010 (section 3.8.1).
const SUBSCRIBE: u8 = 0x82;
/// PUBLISH, QoS 0, no DUP, no RETAIN.
const PUBLISH_QOS0: u8 = 0x30;
/// Packet types we read: the high nibble of the first byte.
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const SUBACK: u8 = 9;
const PINGRESP: u8 = 13;
/// Clean-session flag of the CONNECT variable header.
const CLEAN_SESSION: u8 = 0x02;

/// Appends CONNECT for client `id` with a clean session.
pub fn connect(id: &str, keepalive_s: u16, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(12 + id.len());
    body.extend_from_slice(&[0, 4]);
    body.extend_from_slice(b"MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(CLEAN_SESSION);
    body.extend_from_slice(&keepalive_s.to_be_bytes());
    // Client ids are at most 64 bytes here, far below the u16 limit.
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    out.push(CONNECT);
    push_length(body.len(), out);
    out.extend_from_slice(&body);
}

/// Appends SUBSCRIBE to `topic` at QoS 0 (packet id 1: one per connection).
pub(super) fn subscribe(topic: &str, out: &mut Vec<u8>) {
    out.push(SUBSCRIBE);
    push_length(2 + 2 + topic.len() + 1, out);
    out.extend_from_slice(&1u16.to_be_bytes());
    push_string(topic.as_bytes(), out);
    out.push(0); // requested QoS
}

/// Appends PUBLISH of `payload` to `topic` at QoS 0.
pub fn publish(topic: &str, payload: &[u8], out: &mut Vec<u8>) {
    out.push(PUBLISH_QOS0);
    push_length(2 + topic.len() + payload.len(), out);
    push_string(topic.as_bytes(), out);
    out.extend_from_slice(payload);
}

/// A length-prefixed string; ours are short topics, far below 64 KiB.
fn push_string(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

pub(super) fn ping(out: &mut Vec<u8>) {
    out.extend_from_slice(&PINGREQ);
}

pub(super) fn disconnect(out: &mut Vec<u8>) {
    out.extend_from_slice(&DISCONNECT);
}

/// The remaining-length field: 7 bits a byte, high bit set while more follow.
fn push_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

/// One whole packet, framed by its remaining length.
pub(super) fn scan(buf: &[u8]) -> Result<Scan<'_>, ScanError> {
    let Some(&first) = buf.first() else {
        return Ok(Scan::NeedMore(0));
    };
    let mut remaining = 0usize;
    let mut header_len = 1;
    loop {
        let Some(&byte) = buf.get(header_len) else {
            return Ok(Scan::NeedMore(0));
        };
        remaining |= usize::from(byte & 0x7F) << (7 * (header_len - 1));
        header_len += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header_len > 4 {
            return Err(ScanError::BadLength);
        }
    }
    let total = header_len + remaining;
    let Some(body) = buf.get(header_len..total) else {
        return Ok(Scan::NeedMore(0));
    };
    let frame = match first >> 4 {
        CONNACK => Inbound::ConnAck {
            accepted: body.get(1) == Some(&0),
        },
        PINGRESP => Inbound::Pong { seq: None },
        SUBACK => Inbound::Subscribed,
        PUBLISH => published(first, body)?,
        _ => Inbound::Other,
    };
    Ok(Scan::Frame(frame, total))
}

/// A PUBLISH's payload: after the topic, and after the packet id at QoS 1 and 2.
fn published(first: u8, body: &[u8]) -> Result<Inbound<'_>, ScanError> {
    let [hi, lo, rest @ ..] = body else {
        return Err(ScanError::Malformed);
    };
    let topic_len = usize::from(u16::from_be_bytes([*hi, *lo]));
    let packet_id = if (first >> 1) & 3 > 0 { 2 } else { 0 };
    rest.get(topic_len + packet_id..)
        .map(|payload| Inbound::Published { body: payload })
        .ok_or(ScanError::Malformed)
}
