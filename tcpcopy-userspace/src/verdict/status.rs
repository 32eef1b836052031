//! What a response says, read from its first bytes: the HTTP/1.x status
//! code, the RESP (redis) reply type and error word, or for any other
//! protocol the first bytes themselves. Parsers take the bytes seen so far
//! and say whether they need more (a status line split across segments).

use std::fmt;

/// Which parser reads a flow's answers (`--verdict`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// Picked per flow from the request's first bytes.
    #[default]
    Auto,
    Http,
    Resp,
    Bytes,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s {
            "auto" => Protocol::Auto,
            "http" => Protocol::Http,
            "resp" => Protocol::Resp,
            "bytes" => Protocol::Bytes,
            _ => return None,
        })
    }

    /// The protocol of a flow whose first request begins with `request`:
    /// an HTTP method followed by a space, a RESP array or inline command,
    /// else bytes.
    pub fn detect(self, request: &[u8]) -> Protocol {
        if self != Protocol::Auto {
            return self;
        }
        const METHODS: [&[u8]; 9] = [
            b"GET ",
            b"POST ",
            b"PUT ",
            b"HEAD ",
            b"DELETE ",
            b"OPTIONS ",
            b"PATCH ",
            b"CONNECT ",
            b"TRACE ",
        ];
        if METHODS.iter().any(|m| request.starts_with(m)) {
            Protocol::Http
        } else if request.first() == Some(&b'*') {
            Protocol::Resp
        } else {
            Protocol::Bytes
        }
    }

    /// Read a response's first bytes.
    pub fn status(self, bytes: &[u8]) -> Parse {
        match self {
            Protocol::Http => http_status(bytes),
            Protocol::Resp => resp_status(bytes),
            Protocol::Auto | Protocol::Bytes => bytes_status(bytes),
        }
    }
}

impl Protocol {
    /// Where answers begin in `bytes`, a segment that begins with one: a
    /// target that answers pipelined requests may send several in one
    /// segment, and those whose start lies within the bytes seen are read
    /// too (0 first; later ones only where their status is readable).
    pub fn answers_in(self, bytes: &[u8]) -> Vec<usize> {
        if bytes.is_empty() {
            return Vec::new();
        }
        let mut at = vec![0];
        match self {
            Protocol::Http => {
                let mut from = 1;
                while let Some(i) = find(&bytes[from..], b"\nHTTP/1.") {
                    let start = from + i + 1;
                    if matches!(http_status(&bytes[start..]), Parse::Done(_)) {
                        at.push(start);
                    }
                    from = start;
                }
            }
            Protocol::Resp => {
                let mut pos = 0;
                while let Some(next) = resp_reply_end(&bytes[pos..]) {
                    pos += next;
                    if pos >= bytes.len()
                        || !matches!(resp_status(&bytes[pos..]), Parse::Done(s) if s != Status::garbage())
                    {
                        break;
                    }
                    at.push(pos);
                }
            }
            Protocol::Auto | Protocol::Bytes => {}
        }
        at
    }
}

impl Protocol {
    /// A request, in a few words, from its first bytes: HTTP's request
    /// line (`GET /differs HTTP/1.1`), a RESP command's first words
    /// (`GET key:1`), else the first line with odd bytes escaped.
    pub fn describe(self, request: &[u8]) -> String {
        if self == Protocol::Resp {
            if let Some(words) = resp_words(request) {
                return words;
            }
        }
        let end = request
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(request.len());
        request[..end].escape_ascii().to_string()
    }
}

/// The first three words of a RESP command (an array of bulk strings),
/// as far as `b` holds them.
fn resp_words(b: &[u8]) -> Option<String> {
    let mut words = Vec::new();
    let mut pos = find(b, b"\r\n")? + 2;
    if b.first() != Some(&b'*') {
        return None;
    }
    while words.len() < 3 && pos < b.len() {
        let word = &b[pos..];
        let line = find(word, b"\r\n")? + 2;
        let n: usize = std::str::from_utf8(word.get(1..line - 2)?)
            .ok()?
            .parse()
            .ok()?;
        let text = word.get(line..(line + n).min(word.len()))?;
        words.push(text.escape_ascii().to_string());
        pos = pos.saturating_add(line).saturating_add(n).saturating_add(2);
    }
    (!words.is_empty()).then(|| words.join(" "))
}

impl Protocol {
    /// Could an answer begin with `bytes`? HTTP: a status line (as far as
    /// the bytes go); RESP: a reply's type byte; other protocols: any.
    pub fn may_start_answer(self, bytes: &[u8]) -> bool {
        match self {
            Protocol::Http => {
                const START: &[u8] = b"HTTP/1.";
                let n = bytes.len().min(START.len());
                n > 0 && bytes[..n] == START[..n]
            }
            Protocol::Resp => {
                matches!(resp_status(bytes), Parse::Done(s) if s != Status::garbage())
                    || bytes.len() < 3 && !bytes.is_empty()
            }
            Protocol::Auto | Protocol::Bytes => !bytes.is_empty(),
        }
    }

    /// The length of the answer at the start of `bytes`, when what is seen
    /// of it tells: an HTTP header that ends within the bytes and gives a
    /// Content-Length (or a status without a body), a RESP reply held
    /// whole. The next answer begins right after.
    pub fn answer_len(self, bytes: &[u8]) -> Option<usize> {
        match self {
            Protocol::Http => http_answer_len(bytes),
            Protocol::Resp => resp_reply_end(bytes),
            Protocol::Auto | Protocol::Bytes => None,
        }
    }
}

impl Protocol {
    /// Whether `bytes` are exactly one whole request (one answer to
    /// come): an HTTP message whose header ends within them and whose
    /// Content-Length (none: no body) ends with them, one RESP command
    /// (an array of bulk strings, or an inline line). A request the
    /// client pipelined (several in one) is not: its answers are several.
    /// Any other protocol: one request is one answer.
    pub fn one_request(self, bytes: &[u8]) -> bool {
        match self {
            Protocol::Http => http_request_len(bytes) == Some(bytes.len()),
            Protocol::Resp => resp_command_len(bytes) == Some(bytes.len()),
            Protocol::Auto | Protocol::Bytes => true,
        }
    }
}

fn http_request_len(b: &[u8]) -> Option<usize> {
    let (header, length) = http_header(b)?;
    header.checked_add(length.unwrap_or(0))
}

/// An HTTP message's header read from `b`: where it ends, and its
/// Content-Length if it gives one (None: no end within `b`, a chunked
/// body, or a Content-Length that is not a number).
fn http_header(b: &[u8]) -> Option<(usize, Option<usize>)> {
    let header = find(b, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&b[..header]).ok()?;
    let mut length = None;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.trim().parse::<usize>().ok()?);
        }
    }
    Some((header, length))
}

/// The length of the RESP command at the start of `b`, held whole: an
/// array of bulk strings, or an inline command (one line).
fn resp_command_len(b: &[u8]) -> Option<usize> {
    let line = find(b, b"\r\n")? + 2;
    if b.first()? != &b'*' {
        return Some(line);
    }
    let n: usize = std::str::from_utf8(&b[1..line - 2]).ok()?.parse().ok()?;
    let mut at = line;
    for _ in 0..n {
        let rest = b.get(at..)?;
        if rest.first()? != &b'$' {
            return None;
        }
        at += resp_reply_end(rest)?;
    }
    Some(at)
}

fn http_answer_len(b: &[u8]) -> Option<usize> {
    let (header, length) = http_header(b)?;
    let Parse::Done(status) = http_status(b) else {
        return None;
    };
    let code = status.as_str();
    if code.starts_with('1') || code == "204" || code == "304" {
        return Some(header);
    }
    header.checked_add(length?)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The length of the RESP reply at the start of `b`, when it is a simple
/// one (a line, or a bulk string) held whole in `b`.
fn resp_reply_end(b: &[u8]) -> Option<usize> {
    let line = find(b, b"\r\n")? + 2;
    match b.first()? {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' => Some(line),
        b'$' => {
            let n: i64 = std::str::from_utf8(&b[1..line - 2]).ok()?.parse().ok()?;
            if n < 0 {
                return Some(line);
            }
            let end = line.checked_add(n as usize)?.checked_add(2)?;
            (end <= b.len()).then_some(end)
        }
        _ => None,
    }
}

/// The outcome of reading a response's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parse {
    Done(Status),
    /// Too few bytes yet to tell.
    NeedMore,
}

/// Bytes kept of a response's start when its status is not readable yet.
pub const STATUS_BYTES: usize = 64;

/// A response's status, as a short label: `200`, `-ERR`, `$-1`, `bytes
/// 48545450`; two answers agree when their labels do.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Status {
    len: u8,
    text: [u8; 23],
}

impl Status {
    fn new(s: &[u8]) -> Status {
        let mut text = [0u8; 23];
        let n = s.len().min(text.len());
        text[..n].copy_from_slice(&s[..n]);
        Status { len: n as u8, text }
    }
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text[..self.len as usize]).unwrap_or("?")
    }
    /// The label of an answer that was not a response of its protocol.
    pub fn garbage() -> Status {
        Status::new(b"garbage")
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status({})", self.as_str())
    }
}

/// `HTTP/1.x NNN ...`: the three digits.
fn http_status(b: &[u8]) -> Parse {
    const START: &[u8] = b"HTTP/1.";
    let n = b.len().min(START.len());
    if b[..n] != START[..n] {
        return Parse::Done(Status::garbage());
    }
    // "HTTP/1.1 200" is 12 bytes.
    if b.len() < 12 {
        return Parse::NeedMore;
    }
    let code = &b[9..12];
    if b[8] != b' ' || !code.iter().all(u8::is_ascii_digit) {
        return Parse::Done(Status::garbage());
    }
    Parse::Done(Status::new(code))
}

/// A RESP reply: its type byte; an error's first word (`-ERR`,
/// `-WRONGTYPE`); a nil bulk string or array (`$-1`, `*-1`).
fn resp_status(b: &[u8]) -> Parse {
    let Some(&kind) = b.first() else {
        return Parse::NeedMore;
    };
    match kind {
        b'-' => match b.iter().position(|&c| c == b' ' || c == b'\r') {
            Some(end) => Parse::Done(Status::new(&b[..end])),
            None if b.len() >= STATUS_BYTES => Parse::Done(Status::new(b)),
            None => Parse::NeedMore,
        },
        b'$' | b'*' => {
            if b.len() < 3 {
                return Parse::NeedMore;
            }
            if &b[1..3] == b"-1" {
                Parse::Done(Status::new(&b[..3]))
            } else {
                Parse::Done(Status::new(&b[..1]))
            }
        }
        b'+' | b':' | b'_' | b',' | b'#' | b'!' | b'=' | b'(' | b'%' | b'~' | b'>' | b'|' => {
            Parse::Done(Status::new(&b[..1]))
        }
        _ => Parse::Done(Status::garbage()),
    }
}

/// Any other protocol: the first 8 bytes, in hex (two answers agree when
/// they begin alike).
fn bytes_status(b: &[u8]) -> Parse {
    if b.len() < 8 {
        return Parse::NeedMore;
    }
    let mut hex = [0u8; 22];
    hex[..6].copy_from_slice(b"bytes ");
    for (i, byte) in b[..8].iter().enumerate() {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        hex[6 + 2 * i] = DIGITS[(byte >> 4) as usize];
        hex[7 + 2 * i] = DIGITS[(byte & 15) as usize];
    }
    Parse::Done(Status::new(&hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_or_several() {
        let get = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(Protocol::Http.one_request(get));
        assert!(
            !Protocol::Http.one_request(&[&get[..], &get[..]].concat()),
            "pipelined"
        );
        assert!(!Protocol::Http.one_request(&get[..10]), "a part");
        let post = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert!(Protocol::Http.one_request(post));
        assert!(!Protocol::Http.one_request(&post[..post.len() - 1]));
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n";
        assert!(Protocol::Resp.one_request(set));
        assert!(
            !Protocol::Resp.one_request(&[&set[..], &set[..]].concat()),
            "pipelined"
        );
        assert!(!Protocol::Resp.one_request(&set[..set.len() - 3]), "a part");
        assert!(Protocol::Resp.one_request(b"PING\r\n"), "inline");
        assert!(!Protocol::Resp.one_request(b"PING\r\nPING\r\n"));
        assert!(Protocol::Bytes.one_request(b"anything"));
    }

    fn done(p: Parse) -> String {
        match p {
            Parse::Done(s) => s.to_string(),
            Parse::NeedMore => "more".into(),
        }
    }

    #[test]
    fn http_status_lines() {
        let h = Protocol::Http;
        assert_eq!(done(h.status(b"HTTP/1.1 200 OK\r\n")), "200");
        assert_eq!(done(h.status(b"HTTP/1.0 503 Service Unavailable")), "503");
        assert_eq!(done(h.status(b"HTTP/1.1 404")), "404");
        // Split anywhere before the code: more is needed.
        assert_eq!(done(h.status(b"HTT")), "more");
        assert_eq!(done(h.status(b"HTTP/1.1 5")), "more");
        assert_eq!(done(h.status(b"")), "more");
        // Not a status line.
        assert_eq!(done(h.status(b"<html>")), "garbage");
        assert_eq!(done(h.status(b"HTTP/1.1 OK!")), "garbage");
        assert_eq!(done(h.status(b"HTTP/2.0 200")), "garbage");
    }

    #[test]
    fn resp_replies() {
        let r = Protocol::Resp;
        assert_eq!(done(r.status(b"+OK\r\n")), "+");
        assert_eq!(done(r.status(b":42\r\n")), ":");
        assert_eq!(done(r.status(b"$5\r\nhello\r\n")), "$");
        assert_eq!(done(r.status(b"$-1\r\n")), "$-1");
        assert_eq!(done(r.status(b"*-1\r\n")), "*-1");
        assert_eq!(done(r.status(b"*2\r\n$1\r\na\r\n")), "*");
        assert_eq!(done(r.status(b"-ERR unknown command\r\n")), "-ERR");
        assert_eq!(
            done(r.status(b"-WRONGTYPE Operation against a key\r\n")),
            "-WRONGTYPE"
        );
        assert_eq!(done(r.status(b"-ER")), "more");
        assert_eq!(done(r.status(b"$")), "more");
        assert_eq!(done(r.status(b"hello")), "garbage");
    }

    #[test]
    fn other_protocols_compare_their_first_bytes() {
        let b = Protocol::Bytes;
        assert_eq!(
            done(b.status(b"\x00\x01\x02\x03\x04\x05\x06\x07\x08")),
            "bytes 0001020304050607"
        );
        assert_eq!(done(b.status(b"short")), "more");
    }

    #[test]
    fn several_answers_in_one_segment() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 503 No\r\n";
        // "hi" ends without a newline: only answers after a line are found.
        assert_eq!(Protocol::Http.answers_in(two), vec![0]);
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi\nHTTP/1.1 503 No\r\n";
        assert_eq!(Protocol::Http.answers_in(two), vec![0, 41]);
        // A status line cut short by the end of the bytes is not taken.
        assert_eq!(
            Protocol::Http.answers_in(b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 2"),
            vec![0]
        );
        assert_eq!(
            Protocol::Resp.answers_in(b"+OK\r\n$3\r\nabc\r\n$-1\r\n:5\r\n$10\r\nab"),
            vec![0, 5, 14, 19, 23]
        );
        assert_eq!(Protocol::Resp.answers_in(b"*2\r\n$1\r\na\r\n"), vec![0]);
        assert_eq!(Protocol::Bytes.answers_in(b"anything"), vec![0]);
    }

    #[test]
    fn answer_lengths_when_the_bytes_tell() {
        let h = b"HTTP/1.1 503 No\r\nContent-Length: 9\r\nServer: x\r\n\r\nnot here\n";
        assert_eq!(Protocol::Http.answer_len(h), Some(h.len()));
        assert_eq!(
            Protocol::Http.answer_len(&h[..30]),
            None,
            "header not whole"
        );
        assert_eq!(
            Protocol::Http.answer_len(b"HTTP/1.1 204 No\r\n\r\n"),
            Some(19)
        );
        assert_eq!(
            Protocol::Http.answer_len(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            None
        );
        assert_eq!(
            Protocol::Http.answer_len(b"HTTP/1.1 200 OK\r\n\r\n"),
            None,
            "no length"
        );
        assert_eq!(Protocol::Resp.answer_len(b"$-1\r\n$3"), Some(5));
        assert_eq!(Protocol::Resp.answer_len(b"$6\r\nonline\r\n"), Some(12));
        assert_eq!(Protocol::Resp.answer_len(b"$6\r\nonl"), None);
    }

    #[test]
    fn requests_in_a_few_words() {
        assert_eq!(
            Protocol::Http.describe(b"GET /differs HTTP/1.1\r\nHost: x\r\n"),
            "GET /differs HTTP/1.1"
        );
        assert_eq!(
            Protocol::Resp.describe(b"*2\r\n$3\r\nGET\r\n$16\r\nkey:000000000000\r\n"),
            "GET key:000000000000"
        );
        assert_eq!(
            Protocol::Resp.describe(b"*3\r\n$3\r\nSET\r\n$2\r\nk"),
            "SET k"
        );
        assert_eq!(
            Protocol::Bytes.describe(b"\x16\x03\x01\n"),
            "\\x16\\x03\\x01"
        );
    }

    proptest::proptest! {
        /// Whatever the bytes, every reader answers and never panics, and
        /// the answers it finds lie within them.
        #[test]
        fn any_bytes_are_read_without_a_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            for p in [Protocol::Http, Protocol::Resp, Protocol::Bytes, Protocol::Auto] {
                let _ = p.status(&bytes);
                let _ = p.describe(&bytes);
                let _ = p.answer_len(&bytes);
                for at in p.answers_in(&bytes) {
                    proptest::prop_assert!(at < bytes.len());
                }
                let _ = Protocol::Auto.detect(&bytes);
            }
        }
    }

    #[test]
    fn auto_picks_per_flow() {
        let a = Protocol::Auto;
        assert_eq!(a.detect(b"GET / HTTP/1.1\r\n"), Protocol::Http);
        assert_eq!(a.detect(b"POST /x HTTP/1.1\r\n"), Protocol::Http);
        assert_eq!(a.detect(b"*3\r\n$3\r\nSET\r\n"), Protocol::Resp);
        assert_eq!(a.detect(b"\x16\x03\x01"), Protocol::Bytes);
        assert_eq!(Protocol::Resp.detect(b"GET / HTTP/1.1"), Protocol::Resp);
    }
}
