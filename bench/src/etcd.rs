//! Driving etcd 3.4 through its gRPC gateway: HTTP/1.1 with JSON bodies on
//! the client URL (`POST /v3/kv/put`, `/v3/kv/range`, `/v3/kv/txn`), keys
//! and values base64-encoded. Requests go out on keep-alive connections and
//! may be pipelined: Go's HTTP server answers a connection's requests one
//! after another, in order, so replies are matched first-in, first-out as
//! with poncho. Small replies carry a `Content-Length`; replies past Go's
//! 2 KiB response buffer come `Transfer-Encoding: chunked` (a range over a
//! value of more than about 1.4 KB, for instance); both are decoded here.
//! The streaming endpoints answer chunked too: `/v3/lease/keepalive` with
//! one request in its body ends its stream after the one result, so it is
//! framed like any reply; `/v3/watch` never ends, and its chunks are decoded
//! as they come ([`ChunkedStream`]).
//!
//! Hand-written, HTTP and base64 alike, to keep the generator free of an
//! async runtime and of new dependencies: it only ever talks to a server it
//! was pointed at, which answers small JSON objects.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 section 4), which is how the
/// gateway spells protobuf `bytes` fields in JSON.
pub fn base64(input: &[u8], out: &mut String) {
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
}

/// Appends one `POST` request with a JSON body.
pub fn write_post(out: &mut Vec<u8>, host: &str, path: &str, body: &str) {
    // `write!` to a Vec cannot fail.
    let _ = write!(
        out,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

/// Where a parsed reply's body is.
enum Body {
    /// This range of the connection's buffer (`Content-Length` framing).
    Buffered(Range<usize>),
    /// The scratch buffer, where the chunks were joined.
    Joined,
}

/// Splits a connection's byte stream into HTTP/1.1 responses.
pub struct HttpResponses {
    buf: Vec<u8>,
    /// Where the next response starts in `buf`.
    start: usize,
    /// The body of the last chunked response, joined.
    joined: Vec<u8>,
    max_bytes: usize,
}

/// One complete response.
pub struct Response<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

impl HttpResponses {
    pub fn new(max_bytes: usize) -> HttpResponses {
        HttpResponses {
            buf: Vec::new(),
            start: 0,
            joined: Vec::new(),
            max_bytes,
        }
    }

    /// Appends bytes read from the connection.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && (self.start == self.buf.len() || self.start >= 1 << 16) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete response; `Ok(None)` until one is buffered.
    pub fn next_response(&mut self) -> Result<Option<Response<'_>>, String> {
        let pending = &self.buf[self.start..];
        let Some((consumed, status, body)) = parse_response(pending, &mut self.joined)? else {
            if pending.len() > self.max_bytes {
                return Err(format!("a reply longer than {} bytes", self.max_bytes));
            }
            return Ok(None);
        };
        let base = self.start;
        self.start += consumed;
        let body = match body {
            Body::Buffered(r) => &self.buf[base + r.start..base + r.end],
            Body::Joined => &self.joined[..],
        };
        Ok(Some(Response { status, body }))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses the response at the start of `pending`: `Ok(None)` if it is not
/// complete yet, else the bytes it takes, its status and where its body is.
fn parse_response(
    pending: &[u8],
    joined: &mut Vec<u8>,
) -> Result<Option<(usize, u16, Body)>, String> {
    let Some(head_len) = find(pending, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&pending[..head_len])
        .map_err(|_| "a reply header that is not UTF-8".to_string())?;
    let Head {
        status,
        content_length,
        chunked,
    } = parse_head(head)?;
    let body_start = head_len + 4;
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Some((body_start, status, Body::Buffered(0..0))));
    }
    if chunked {
        return Ok(join_chunks(pending, body_start, joined)?.map(|end| (end, status, Body::Joined)));
    }
    let Some(len) = content_length else {
        return Err(format!(
            "a reply (HTTP {status}) with neither Content-Length nor chunked encoding"
        ));
    };
    if pending.len() < body_start + len {
        return Ok(None);
    }
    Ok(Some((
        body_start + len,
        status,
        Body::Buffered(body_start..body_start + len),
    )))
}

/// What a response's head says about its body.
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
}

/// Parses the status line and headers (the head without its final CRLF CRLF).
fn parse_head(head: &str) -> Result<Head, String> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = match status_line.split_once(' ') {
        Some((version, rest)) if version.starts_with("HTTP/1.") => rest
            .get(..3)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?,
        _ => return Err(format!("not an HTTP/1.1 reply: {status_line:?}")),
    };
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    Ok(Head {
        status,
        content_length,
        chunked,
    })
}

/// Joins a chunked body starting at `at` into `joined`: `Ok(None)` if it
/// is not complete yet, else where the response ends.
fn join_chunks(
    pending: &[u8],
    mut at: usize,
    joined: &mut Vec<u8>,
) -> Result<Option<usize>, String> {
    joined.clear();
    loop {
        let Some(line_len) = find(&pending[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&pending[at..at + line_len]).unwrap_or("?");
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size line {line:?}"))?;
        at += line_len + 2;
        if size == 0 {
            // Trailers, if any, then the empty line that ends the body.
            loop {
                let Some(len) = find(&pending[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += len + 2;
                if len == 0 {
                    return Ok(Some(at));
                }
            }
        }
        if pending.len() < at + size + 2 {
            return Ok(None);
        }
        if &pending[at + size..at + size + 2] != b"\r\n" {
            return Err("a chunk not followed by CRLF".into());
        }
        joined.extend_from_slice(&pending[at..at + size]);
        at += size + 2;
    }
}

/// What the generator reads from a gateway reply: every successful one has
/// a `header`; a failed one has an `error` (and a status other than 200).
#[derive(Deserialize)]
struct GatewayReply {
    #[serde(default)]
    header: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<Value>,
}

/// `Ok(())` for a successful reply, else a description of the failure.
pub fn check_reply(reply: &Response<'_>) -> Result<(), String> {
    let describe = || {
        let text = String::from_utf8_lossy(reply.body);
        let cut: String = text.chars().take(300).collect();
        format!("HTTP {}: {cut}", reply.status)
    };
    if reply.status != 200 {
        return Err(describe());
    }
    match serde_json::from_slice::<GatewayReply>(reply.body) {
        Ok(GatewayReply {
            header: Some(_),
            error: None,
        }) => Ok(()),
        _ => Err(describe()),
    }
}

/// What a streaming endpoint's reply holds (`/v3/lease/keepalive`, and
/// each message of `/v3/watch`): `{"result": {...}}` or `{"error": {...}}`.
#[derive(Deserialize)]
struct KeepAliveReply {
    #[serde(default)]
    result: Option<KeepAliveResult>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct KeepAliveResult {
    #[serde(default)]
    header: Option<IgnoredAny>,
    /// The gateway writes int64 fields as strings, and leaves zero out.
    #[serde(default, rename = "TTL")]
    ttl: Option<Value>,
}

/// `Ok(())` for a `/v3/lease/keepalive` reply that renewed its lease: one
/// `result` with a header and a positive TTL (etcd answers a lease it does
/// not hold with TTL 0, which the gateway leaves out).
pub fn check_keepalive(reply: &Response<'_>) -> Result<(), String> {
    let describe = |why: &str| {
        let text = String::from_utf8_lossy(reply.body);
        let cut: String = text.chars().take(300).collect();
        format!("HTTP {}{why}: {cut}", reply.status)
    };
    if reply.status != 200 {
        return Err(describe(""));
    }
    match serde_json::from_slice::<KeepAliveReply>(reply.body) {
        Ok(KeepAliveReply {
            result:
                Some(KeepAliveResult {
                    header: Some(_),
                    ttl,
                }),
            error: None,
        }) => match ttl
            .as_ref()
            .and_then(id_of)
            .and_then(|t| t.parse::<i64>().ok())
        {
            Some(t) if t > 0 => Ok(()),
            _ => Err(describe(" (lease not found: no TTL)")),
        },
        _ => Err(describe("")),
    }
}

/// The lease id a successful `/v3/lease/grant` reply gives (`"ID"`).
pub fn granted_lease(reply: &Response<'_>) -> Result<u64, String> {
    check_reply(reply)?;
    serde_json::from_slice::<Value>(reply.body)
        .ok()
        .and_then(|v| id_of(&v["ID"]))
        .and_then(|id| id.parse::<u64>().ok())
        .ok_or_else(|| {
            format!(
                "a lease grant reply without an ID: {}",
                String::from_utf8_lossy(reply.body)
            )
        })
}

/// Decodes standard base64 (padding optional) into `out`; a trailing
/// partial group of 2 or 3 characters gives its 1 or 2 bytes.
pub fn base64_decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let value = |c: u8| -> Result<u32, String> {
        BASE64
            .iter()
            .position(|&b| b == c)
            .map(|p| p as u32)
            .ok_or_else(|| format!("not base64: {:?}", c as char))
    };
    let input = match input.iter().position(|&c| c == b'=') {
        Some(end) => &input[..end],
        None => input,
    };
    for group in input.chunks(4) {
        if group.len() == 1 {
            return Err("a base64 group of one character".into());
        }
        let mut n = 0u32;
        for (i, &c) in group.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    Ok(())
}

/// A streaming reply (`/v3/watch`): the response head, then its chunks
/// decoded as they come in. The gateway writes one JSON message per line.
#[derive(Default)]
pub struct ChunkedStream {
    buf: Vec<u8>,
    head_done: bool,
}

impl ChunkedStream {
    /// Appends bytes read from the connection and hands the body bytes
    /// decoded so far to `body`, in order. An error status, a reply that is
    /// not chunked, or the stream's end (its last chunk) is an error.
    pub fn extend(&mut self, bytes: &[u8], mut body: impl FnMut(&[u8])) -> Result<(), String> {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        let outcome = loop {
            let pending = &self.buf[at..];
            if !self.head_done {
                let Some(head_len) = find(pending, b"\r\n\r\n") else {
                    break Ok(());
                };
                let head = match std::str::from_utf8(&pending[..head_len]) {
                    Ok(h) => h,
                    Err(_) => break Err("a reply header that is not UTF-8".to_string()),
                };
                let head = match parse_head(head) {
                    Ok(h) => h,
                    Err(e) => break Err(e),
                };
                if head.status != 200 || !head.chunked {
                    let rest = String::from_utf8_lossy(&pending[head_len + 4..]);
                    let cut: String = rest.chars().take(300).collect();
                    break Err(format!("HTTP {} (not a stream): {cut}", head.status));
                }
                self.head_done = true;
                at += head_len + 4;
                continue;
            }
            let Some(line_len) = find(pending, b"\r\n") else {
                break Ok(());
            };
            let line = std::str::from_utf8(&pending[..line_len]).unwrap_or("?");
            let hex = line.split(';').next().unwrap_or_default().trim();
            let Ok(size) = usize::from_str_radix(hex, 16) else {
                break Err(format!("bad chunk size line {line:?}"));
            };
            if size == 0 {
                break Err("the stream ended".to_string());
            }
            let data = line_len + 2;
            if pending.len() < data + size + 2 {
                break Ok(());
            }
            if &pending[data + size..data + size + 2] != b"\r\n" {
                break Err("a chunk not followed by CRLF".into());
            }
            body(&pending[data..data + size]);
            at += data + size + 2;
        };
        self.buf.drain(..at);
        outcome
    }
}

/// One blocking request on a connection of its own, for discovery.
pub fn post(addr: SocketAddr, path: &str, body: &str) -> Result<(u16, Vec<u8>), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    write_post(&mut request, &addr.to_string(), path, body);
    s.write_all(&request)
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut responses = HttpResponses::new(16 << 20);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(r) = responses.next_response()? {
            return Ok((r.status, r.body.to_vec()));
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(format!("{addr} closed the connection")),
            Ok(n) => responses.extend(&chunk[..n]),
            Err(e) => return Err(format!("read from {addr}: {e}")),
        }
    }
}

fn post_json(addr: SocketAddr, path: &str, body: &str) -> Result<Value, String> {
    let (status, body) = post(addr, path, body)?;
    if status != 200 {
        return Err(format!(
            "{addr}{path}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{addr}{path}: bad JSON: {e}"))
}

/// The gateway writes uint64 fields as JSON strings; accept numbers too.
fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `http://host:port` (as etcd lists client URLs) to a socket address.
fn url_addr(url: &str) -> Option<SocketAddr> {
    let rest = url.strip_prefix("http://")?;
    let hostport = rest.split('/').next()?;
    hostport.to_socket_addrs().ok()?.next()
}

/// Finds the leader's client address: each member's status names the leader
/// (`leader`) and itself (`header.member_id`); a leader that is not in
/// `cluster` is looked up in the member list.
pub fn find_leader(cluster: &[SocketAddr]) -> Result<SocketAddr, String> {
    let mut leader_id = None;
    let mut reachable = None;
    let mut last_error = String::new();
    for &addr in cluster {
        let status = match post_json(addr, "/v3/maintenance/status", "{}") {
            Ok(s) => s,
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        reachable.get_or_insert(addr);
        let me = id_of(&status["header"]["member_id"]);
        let leader = id_of(&status["leader"]).filter(|l| l != "0");
        if me.is_some() && me == leader {
            return Ok(addr);
        }
        if leader.is_some() {
            leader_id = leader;
        }
    }
    if let (Some(addr), Some(leader)) = (reachable, leader_id) {
        let list = post_json(addr, "/v3/cluster/member/list", "{}")?;
        for member in list["members"].as_array().into_iter().flatten() {
            if id_of(&member["ID"]).as_deref() == Some(&leader) {
                if let Some(a) = member["clientURLs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .find_map(url_addr)
                {
                    return Ok(a);
                }
            }
        }
    }
    let why = if last_error.is_empty() {
        String::new()
    } else {
        format!(" (last error: {last_error})")
    };
    Err(format!("no leader found among {cluster:?}{why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        let mut out = String::new();
        base64(s.as_bytes(), &mut out);
        out
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("key:00000042", "a2V5OjAwMDAwMDQy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(b64(plain), encoded, "{plain:?}");
        }
        let mut out = String::new();
        base64(&[0xfb, 0xff, 0xbf], &mut out);
        assert_eq!(out, "+/+/");
    }

    fn all(stream: &[u8], split_every: usize) -> Vec<(u16, String)> {
        let mut r = HttpResponses::new(1 << 20);
        let mut got = Vec::new();
        for piece in stream.chunks(split_every) {
            r.extend(piece);
            while let Some(resp) = r.next_response().unwrap() {
                got.push((resp.status, String::from_utf8(resp.body.to_vec()).unwrap()));
            }
        }
        got
    }

    #[test]
    fn pipelined_replies_split_anywhere_come_out_whole_and_in_order() {
        let stream = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"header\":{}}\
HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n5\r\n{\"hea\r\n8;ext=1\r\nder\":{}}\r\n0\r\nX-Trailer: 1\r\n\r\n\
HTTP/1.1 400 Bad Request\r\nContent-Length: 15\r\n\r\n{\"error\":\"bad\"}\
HTTP/1.1 204 No Content\r\n\r\n";
        let want = vec![
            (200, "{\"header\":{}}".to_string()),
            (200, "{\"header\":{}}".to_string()),
            (400, "{\"error\":\"bad\"}".to_string()),
            (204, String::new()),
        ];
        for split in [1, 2, 3, 7, 64, stream.len()] {
            assert_eq!(all(stream, split), want, "split every {split}");
        }
    }

    #[test]
    fn replies_that_cannot_be_framed_are_errors() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\n\r\n{}"[..],
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        ] {
            let mut r = HttpResponses::new(1 << 20);
            r.extend(bad);
            assert!(
                r.next_response().is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut r = HttpResponses::new(16);
        r.extend(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
        assert!(r.next_response().is_err());
    }

    #[test]
    fn a_reply_counts_as_success_only_with_status_200_and_a_header() {
        let ok = Response {
            status: 200,
            body:
                br#"{"header":{"revision":"2"},"kvs":[{"key":"a2V5","value":"dg=="}],"count":"1"}"#,
        };
        assert!(check_reply(&ok).is_ok());
        let bad = [
            Response {
                status: 200,
                body: br#"{"error":"etcdserver: request timed out","code":14}"#,
            },
            Response {
                status: 503,
                body: br#"{"header":{}}"#,
            },
            Response {
                status: 200,
                body: b"not json",
            },
        ];
        for b in &bad {
            assert!(check_reply(b).is_err());
        }
    }

    #[test]
    fn base64_decodes_what_it_encodes() {
        for plain in ["", "f", "fo", "foo", "foob", "1712345678901234567:vvvv"] {
            let mut out = Vec::new();
            base64_decode(b64(plain).as_bytes(), &mut out).unwrap();
            assert_eq!(out, plain.as_bytes());
            // Unpadded, and cut at a group boundary.
            let mut out = Vec::new();
            base64_decode(b64(plain).trim_end_matches('=').as_bytes(), &mut out).unwrap();
            assert_eq!(out, plain.as_bytes());
        }
        let mut out = Vec::new();
        base64_decode(&b64("1712345678901234567:vvvv").as_bytes()[..8], &mut out).unwrap();
        assert_eq!(out, b"171234");
        assert!(base64_decode(b"a*==", &mut Vec::new()).is_err());
        assert!(base64_decode(b"abcde", &mut Vec::new()).is_err());
    }

    #[test]
    fn a_chunked_stream_split_anywhere_gives_its_body_in_order() {
        let stream = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
1c\r\n{\"result\":{\"created\":true}}\n\r\n3;x=y\r\n{\"r\r\n18\r\nesult\":{\"events\":[{}]}}\n\r\n";
        let want = "{\"result\":{\"created\":true}}\n{\"result\":{\"events\":[{}]}}\n";
        for split in [1, 2, 5, 13, stream.len()] {
            let mut s = ChunkedStream::default();
            let mut got = Vec::new();
            for piece in stream.chunks(split) {
                s.extend(piece, |b| got.extend_from_slice(b)).unwrap();
            }
            assert_eq!(String::from_utf8(got).unwrap(), want, "split every {split}");
        }
        let mut s = ChunkedStream::default();
        assert!(s
            .extend(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                |_| ()
            )
            .is_err());
        let mut s = ChunkedStream::default();
        let e = s
            .extend(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 15\r\n\r\n{\"error\":\"bad\"}",
                |_| (),
            )
            .unwrap_err();
        assert!(e.contains("400") && e.contains("bad"), "{e}");
    }

    #[test]
    fn keepalive_and_grant_replies() {
        let reply = |status, body: &'static [u8]| Response { status, body };
        assert!(check_keepalive(&reply(
            200,
            br#"{"result":{"header":{"revision":"5"},"ID":"7587","TTL":"60"}}"#
        ))
        .is_ok());
        for bad in [
            reply(
                200,
                br#"{"result":{"header":{"revision":"5"},"ID":"7587"}}"#,
            ),
            reply(200, br#"{"result":{"header":{},"ID":"7587","TTL":"-1"}}"#),
            reply(
                200,
                br#"{"error":{"grpc_code":5,"message":"lease not found"}}"#,
            ),
            reply(500, br#"{"result":{"header":{},"TTL":"60"}}"#),
        ] {
            assert!(check_keepalive(&bad).is_err());
        }
        assert_eq!(
            granted_lease(&reply(
                200,
                br#"{"header":{"revision":"5"},"ID":"7587790972011111","TTL":"60"}"#
            )),
            Ok(7_587_790_972_011_111)
        );
        assert!(granted_lease(&reply(200, br#"{"header":{}}"#)).is_err());
    }

    #[test]
    fn client_urls_parse() {
        assert_eq!(
            url_addr("http://127.0.0.1:23791"),
            Some("127.0.0.1:23791".parse().unwrap())
        );
        assert_eq!(url_addr("https://127.0.0.1:1"), None);
    }
}
