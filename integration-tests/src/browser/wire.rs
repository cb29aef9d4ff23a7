//! A minimal HTTP/1.1 JSON client for the WebDriver protocol: one connection per
//! request (`Connection: close`), every step under a deadline.
//!
//! Chromedriver refuses a request whose `Host` is neither `localhost` nor an IP
//! literal, and any request with an `Origin` header it was not told to allow; this
//! client sends `Host: <ip>:<port>` and no `Origin`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Bytes of a response this client accepts at most (screenshots are the largest).
const RESPONSE_BYTES_MAX: usize = 64 << 20;

/// An answer of the server: its status and JSON body (`Null` when empty).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Value,
}

/// Sends `method path` with an optional JSON body to `addr` and reads the whole answer
/// within `timeout`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Response, String> {
    let deadline = Instant::now() + timeout;
    let what = format!("{method} http://{addr}{path}");
    let mut stream = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(5)))
        .map_err(|e| format!("{what}: connect: {e}"))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json; charset=utf-8\r\n");
    }
    head.push_str("\r\n");
    stream
        .set_write_timeout(Some(remaining(deadline)))
        .and_then(|()| stream.write_all(head.as_bytes()))
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(|e| format!("{what}: send: {e}"))?;

    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let left = remaining(deadline);
        if left.is_zero() {
            return Err(format!("{what}: no complete answer within {timeout:?}"));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("{what}: {e}"))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                // Chromedriver keeps the connection open despite `Connection: close`.
                if complete(&raw) {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("{what}: no complete answer within {timeout:?}"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{what}: read: {e}")),
        }
        if raw.len() > RESPONSE_BYTES_MAX {
            return Err(format!("{what}: answer over {RESPONSE_BYTES_MAX} bytes"));
        }
    }
    parse(&raw).map_err(|e| format!("{what}: {e}"))
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The parts of a response's head that say where its body ends.
struct Head {
    status_line: String,
    /// Bytes of the head, with the blank line.
    len: usize,
    chunked: bool,
    length: Option<usize>,
}

fn head(raw: &[u8]) -> Option<Head> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = String::from_utf8_lossy(&raw[..split]);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_string();
    let (mut chunked, mut length) = (false, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    Some(Head {
        status_line,
        len: split + 4,
        chunked,
        length,
    })
}

/// Whether `raw` holds a whole response (by its length or its last chunk); without
/// either, the response ends when the server closes.
fn complete(raw: &[u8]) -> bool {
    match head(raw) {
        None => false,
        Some(h) if h.chunked => dechunk(&raw[h.len..]).is_ok(),
        Some(h) => h.length.is_some_and(|n| raw.len() >= h.len + n),
    }
}

/// Parses a whole HTTP/1.1 response.
fn parse(raw: &[u8]) -> Result<Response, String> {
    let Head {
        status_line,
        len,
        chunked,
        length,
    } = head(raw).ok_or("answer without a header end")?;
    let mut rest = &raw[len..];
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let body = if chunked {
        dechunk(rest)?
    } else {
        if let Some(n) = length {
            if rest.len() < n {
                return Err(format!("body of {} bytes, {n} announced", rest.len()));
            }
            rest = &rest[..n];
        }
        rest.to_vec()
    };
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            format!(
                "status {status}, body is not JSON ({e}): {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )
        })?
    };
    Ok(Response { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk without a size line")?;
        let size_line = String::from_utf8_lossy(&rest[..end]);
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_line:?}"))?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err("truncated chunk".to_string());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Decodes standard base64 (with or without padding), as WebDriver screenshots are.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\r' | b'\n' => continue,
            _ => return Err(format!("not base64: byte {c:#x}")),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{\"value\":null}";
        let r = parse(plain).unwrap();
        assert_eq!(
            (r.status, r.body),
            (200, serde_json::json!({"value": null}))
        );
        let chunked =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n";
        let r = parse(chunked).unwrap();
        assert_eq!((r.status, r.body), (404, serde_json::json!({"a": 1})));
    }

    #[test]
    fn decodes_base64() {
        assert_eq!(base64_decode("iVBORw0KGgo=").unwrap(), b"\x89PNG\r\n\x1a\n");
        assert_eq!(base64_decode("aGk").unwrap(), b"hi");
        assert!(base64_decode("a*b").is_err());
    }
}
