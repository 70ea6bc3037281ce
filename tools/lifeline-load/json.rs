//! Flat JSON objects (`{"key": scalar, ...}`): enough for the worker result line
//! and the `--json` report, without pulling a serialization framework in.
//!
//! The reader accepts what the writer produces (and ordinary JSON spacing); it
//! rejects nested objects and arrays rather than guessing.

use std::collections::HashMap;
use std::fmt::Write as _;

/// One scalar value of a flat object.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    /// A float with the number of decimals to print.
    Float(f64, usize),
    Str(String),
}

impl Value {
    /// The value as it appears in a `key=value` line (`na` for null).
    pub fn plain(&self) -> String {
        match self {
            Value::Null => "na".to_string(),
            Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
            Value::Int(n) => n.to_string(),
            Value::Uint(n) => n.to_string(),
            Value::Float(x, decimals) => format!("{x:.decimals$}"),
            Value::Str(s) => s.clone(),
        }
    }

    fn write_json(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Uint(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Float(x, decimals) if x.is_finite() => {
                let _ = write!(out, "{x:.decimals$}");
            }
            Value::Float(..) => out.push_str("null"),
            Value::Str(s) => write_string(s, out),
        }
    }
}

/// Serializes `pairs` as one JSON object on one line.
pub fn to_object(pairs: &[(String, Value)]) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(key, &mut out);
        out.push(':');
        value.write_json(&mut out);
    }
    out.push('}');
    out
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Why a line is not a flat JSON object.
#[derive(Debug, thiserror::Error)]
#[error("bad JSON at byte {at}: {what}")]
pub struct ParseError {
    at: usize,
    what: &'static str,
}

/// Parses one flat JSON object into a key → value map.
pub fn parse_object(text: &str) -> Result<HashMap<String, Value>, ParseError> {
    let mut reader = Reader {
        bytes: text.as_bytes(),
        at: 0,
    };
    let mut map = HashMap::new();
    reader.eat(b'{')?;
    if reader.peek_after_ws() == Some(b'}') {
        reader.at += 1;
        return reader.end(map);
    }
    loop {
        let key = reader.string()?;
        reader.eat(b':')?;
        let value = reader.scalar()?;
        map.insert(key, value);
        match reader.peek_after_ws() {
            Some(b',') => reader.at += 1,
            Some(b'}') => {
                reader.at += 1;
                return reader.end(map);
            }
            _ => return Err(reader.error("expected ',' or '}'")),
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn error(&self, what: &'static str) -> ParseError {
        ParseError { at: self.at, what }
    }

    fn peek_after_ws(&mut self) -> Option<u8> {
        while let Some(b) = self.bytes.get(self.at) {
            if !b.is_ascii_whitespace() {
                return Some(*b);
            }
            self.at += 1;
        }
        None
    }

    fn eat(&mut self, byte: u8) -> Result<(), ParseError> {
        if self.peek_after_ws() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error("unexpected character"))
        }
    }

    fn end(mut self, map: HashMap<String, Value>) -> Result<HashMap<String, Value>, ParseError> {
        match self.peek_after_ws() {
            None => Ok(map),
            Some(_) => Err(self.error("trailing characters")),
        }
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.bytes.get(self.at) else {
                return Err(self.error("unterminated string"));
            };
            self.at += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(&esc) = self.bytes.get(self.at) else {
                        return Err(self.error("unterminated escape"));
                    };
                    self.at += 1;
                    match esc {
                        b'"' | b'\\' | b'/' => out.push(esc),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let hex = self
                                .bytes
                                .get(self.at..self.at + 4)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .and_then(char::from_u32)
                                .ok_or_else(|| self.error("bad \\u escape"))?;
                            self.at += 4;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(hex.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(self.error("unknown escape")),
                    }
                }
                _ => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("string is not UTF-8"))
    }

    fn scalar(&mut self) -> Result<Value, ParseError> {
        match self.peek_after_ws() {
            Some(b'"') => self.string().map(Value::Str),
            Some(b't') => self.word("true", Value::Bool(true)),
            Some(b'f') => self.word("false", Value::Bool(false)),
            Some(b'n') => self.word("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.error("expected a scalar value")),
        }
    }

    fn word(&mut self, word: &str, value: Value) -> Result<Value, ParseError> {
        if self.bytes[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.error("unknown literal"))
        }
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.at;
        while let Some(b) = self.bytes.get(self.at) {
            if !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                break;
            }
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at])
            .map_err(|_| self.error("bad number"))?;
        if let Ok(n) = text.parse::<u64>() {
            return Ok(Value::Uint(n));
        }
        if let Ok(n) = text.parse::<i64>() {
            return Ok(Value::Int(n));
        }
        text.parse::<f64>()
            .map(|x| Value::Float(x, 3))
            .map_err(|_| self.error("bad number"))
    }
}

/// Typed accessors over a parsed object.
pub trait Fields {
    fn uint(&self, key: &str) -> Option<u64>;
    fn text(&self, key: &str) -> Option<&str>;
}

impl Fields for HashMap<String, Value> {
    fn uint(&self, key: &str) -> Option<u64> {
        match self.get(key)? {
            Value::Uint(n) => Some(*n),
            _ => None,
        }
    }

    fn text(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind_of_scalar() {
        let pairs = vec![
            ("a".to_string(), Value::Uint(18_446_744_073_709_551_615)),
            ("b".to_string(), Value::Int(-42)),
            ("c".to_string(), Value::Str("x \"y\"\\\n\u{1}é".to_string())),
            ("d".to_string(), Value::Bool(true)),
            ("e".to_string(), Value::Null),
        ];
        let map = parse_object(&to_object(&pairs)).unwrap();
        for (key, value) in &pairs {
            assert_eq!(map.get(key), Some(value), "{key}");
        }
    }

    #[test]
    fn floats_keep_their_decimals_on_output() {
        let text = to_object(&[("x".to_string(), Value::Float(1.23456, 2))]);
        assert_eq!(text, r#"{"x":1.23}"#);
    }

    #[test]
    fn rejects_nesting_and_trailing_garbage() {
        assert!(parse_object(r#"{"a":{"b":1}}"#).is_err());
        assert!(parse_object(r#"{"a":1} x"#).is_err());
        assert!(parse_object(r#"{"a":1"#).is_err());
        assert!(parse_object("{}").unwrap().is_empty());
    }
}
