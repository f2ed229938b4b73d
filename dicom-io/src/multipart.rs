//! A streaming parser of `multipart/related` bodies (RFC 2387 over the
//! RFC 2046 syntax), as STOW-RS requests carry them: fed the body chunk by
//! chunk, it yields part headers and part data without ever holding more
//! than one chunk and a delimiter's length of a part in memory, so a
//! multi-gigabyte study streams to disk.

use memchr::memmem;

/// Something the parser found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A part begins, with its headers (names lower-cased).
    PartStart(Vec<(String, String)>),
    /// Bytes of the current part's body.
    Data(Vec<u8>),
    /// The current part ended.
    PartEnd,
}

/// Why a body is not valid multipart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// The headers of a part are too long or not `name: value` lines.
    #[error("malformed part headers: {0}")]
    Headers(String),
    /// The body ended before the closing delimiter.
    #[error("the body ended before the closing boundary delimiter")]
    Truncated,
    /// Something other than CRLF or `--` follows a delimiter.
    #[error("malformed boundary delimiter line")]
    Delimiter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Preamble,
    AfterDelimiter,
    Headers,
    Body,
    End,
}

const MAX_HEADERS: usize = 16 * 1024;

/// The parser.
#[derive(Debug)]
pub struct Parser {
    delimiter: Vec<u8>,
    buf: Vec<u8>,
    state: State,
}

impl Parser {
    /// A parser for parts separated by `boundary`.
    pub fn new(boundary: &str) -> Self {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        Self {
            delimiter,
            // The first delimiter may open the body without a CRLF before it.
            buf: b"\r\n".to_vec(),
            state: State::Preamble,
        }
    }

    /// Whether the closing delimiter was seen.
    pub fn finished(&self) -> bool {
        self.state == State::End
    }

    /// Feed the next chunk; returns what it completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, MultipartError> {
        let mut events = Vec::new();
        if self.state == State::End {
            return Ok(events);
        }
        self.buf.extend_from_slice(chunk);
        let d = self.delimiter.len();
        loop {
            match self.state {
                State::Preamble => match memmem::find(&self.buf, &self.delimiter) {
                    Some(i) => {
                        self.buf.drain(..i + d);
                        self.state = State::AfterDelimiter;
                    }
                    None => {
                        let keep = self.buf.len().saturating_sub(d - 1);
                        self.buf.drain(..keep);
                        break;
                    }
                },
                State::AfterDelimiter => {
                    if self.buf.len() < 2 {
                        break;
                    }
                    if self.buf.starts_with(b"--") {
                        self.state = State::End;
                        self.buf.clear();
                        break;
                    }
                    match memmem::find(&self.buf, b"\r\n") {
                        Some(i) => {
                            // Only transport padding may precede the CRLF.
                            if self.buf[..i].iter().any(|b| *b != b' ' && *b != b'\t') {
                                return Err(MultipartError::Delimiter);
                            }
                            self.buf.drain(..i + 2);
                            self.state = State::Headers;
                        }
                        None if self.buf.len() > 1024 => return Err(MultipartError::Delimiter),
                        None => break,
                    }
                }
                State::Headers => {
                    let end = if self.buf.starts_with(b"\r\n") {
                        Some((0, 2))
                    } else {
                        memmem::find(&self.buf, b"\r\n\r\n").map(|i| (i, i + 4))
                    };
                    match end {
                        Some((i, next)) => {
                            let headers = parse_headers(&self.buf[..i])?;
                            self.buf.drain(..next);
                            events.push(Event::PartStart(headers));
                            self.state = State::Body;
                        }
                        None if self.buf.len() > MAX_HEADERS => {
                            return Err(MultipartError::Headers(format!(
                                "more than {MAX_HEADERS} bytes"
                            )));
                        }
                        None => break,
                    }
                }
                State::Body => match memmem::find(&self.buf, &self.delimiter) {
                    Some(i) => {
                        if i > 0 {
                            events.push(Event::Data(self.buf[..i].to_vec()));
                        }
                        events.push(Event::PartEnd);
                        self.buf.drain(..i + d);
                        self.state = State::AfterDelimiter;
                    }
                    None => {
                        let safe = self.buf.len().saturating_sub(d - 1);
                        if safe > 0 {
                            events.push(Event::Data(self.buf.drain(..safe).collect()));
                        }
                        break;
                    }
                },
                State::End => break,
            }
        }
        Ok(events)
    }

    /// The body is over: an error unless the closing delimiter was seen.
    pub fn finish(&self) -> Result<(), MultipartError> {
        if self.finished() {
            Ok(())
        } else {
            Err(MultipartError::Truncated)
        }
    }
}

fn parse_headers(block: &[u8]) -> Result<Vec<(String, String)>, MultipartError> {
    let text =
        std::str::from_utf8(block).map_err(|_| MultipartError::Headers("not ASCII".into()))?;
    text.split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| MultipartError::Headers(format!("no colon in {line:?}")))?;
            Ok((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect()
}

/// A media type's essence (lower case) and its parameters (names lower
/// case, values unquoted).
pub fn media_type(text: &str) -> (String, Vec<(String, String)>) {
    let mut pieces = split_unquoted(text, ';').into_iter();
    let essence = pieces
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let params = pieces
        .filter_map(|p| {
            let (name, value) = p.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((name.trim().to_ascii_lowercase(), value.to_string()))
        })
        .collect();
    (essence, params)
}

/// Split on `separator` outside double quotes (media type parameters on
/// `;`, Accept headers on `,`).
pub fn split_unquoted(text: &str, separator: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in text.chars() {
        if c == separator && !quoted {
            out.push(String::new());
            continue;
        }
        if c == '"' {
            quoted = !quoted;
        }
        if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}

/// The value of parameter `name`.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Part = (Vec<(String, String)>, Vec<u8>);

    fn parse_in_chunks(body: &[u8], boundary: &str, size: usize) -> Vec<Part> {
        let mut parser = Parser::new(boundary);
        let mut parts = Vec::new();
        for chunk in body.chunks(size) {
            for event in parser.feed(chunk).unwrap() {
                match event {
                    Event::PartStart(h) => parts.push((h, Vec::new())),
                    Event::Data(d) => parts.last_mut().unwrap().1.extend(d),
                    Event::PartEnd => {}
                }
            }
        }
        parser.finish().unwrap();
        parts
    }

    #[test]
    fn parts_come_out_whole_whatever_the_chunking() {
        let mut body =
            b"preamble\r\n--b0undary\r\nContent-Type: application/dicom\r\n\r\n".to_vec();
        let first: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        body.extend(&first);
        // A near-delimiter inside the data must not split it.
        body.extend(b"\r\n--b0undar");
        body.extend(b"\r\n--b0undary  \r\ncontent-type: application/dicom\r\n\r\nsecond");
        body.extend(b"\r\n--b0undary--\r\nepilogue");
        let mut expected_first = first.clone();
        expected_first.extend(b"\r\n--b0undar");
        for size in [1, 2, 7, 64, 4096, body.len()] {
            let parts = parse_in_chunks(&body, "b0undary", size);
            assert_eq!(parts.len(), 2, "chunk size {size}");
            assert_eq!(
                parts[0].0,
                vec![("content-type".into(), "application/dicom".into())]
            );
            assert_eq!(parts[0].1, expected_first, "chunk size {size}");
            assert_eq!(parts[1].1, b"second");
        }
    }

    #[test]
    fn a_body_without_its_closing_delimiter_is_truncated() {
        let mut parser = Parser::new("x");
        parser.feed(b"--x\r\n\r\nabc").unwrap();
        assert_eq!(parser.finish(), Err(MultipartError::Truncated));
        let mut parser = Parser::new("x");
        assert_eq!(parser.feed(b"--xjunk\r\n"), Err(MultipartError::Delimiter));
    }

    #[test]
    fn media_types_and_quoted_parameters() {
        let (essence, params) =
            media_type("Multipart/Related; type=\"application/dicom\"; boundary=\"a;b\"");
        assert_eq!(essence, "multipart/related");
        assert_eq!(param(&params, "type"), Some("application/dicom"));
        assert_eq!(param(&params, "boundary"), Some("a;b"));
    }

    /// Bounded, seeded fuzzing of the STOW-RS body parser and the media
    /// type parser (docs/fuzzing.md): no input may make them panic, in any
    /// chunking.
    #[test]
    fn fuzz_multipart_bodies_and_media_types() {
        use vigie_test_support::fuzz;
        let mut body =
            b"preamble\r\n--b0undary\r\nContent-Type: application/dicom\r\n\r\n".to_vec();
        body.extend_from_slice(&[0u8, 1, 2, 13, 10, 45, 45]);
        body.extend_from_slice(b"\r\n--b0undary\r\nContent-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\nContent-Length: 6\r\n\r\nsecond\r\n--b0undary--\r\n");
        let seeds = vec![
            body,
            b"--b0undary\r\n\r\n\r\n--b0undary--".to_vec(),
            b"multipart/related; type=\"application/dicom\"; boundary=\"a;b\"".to_vec(),
        ];
        let summary = fuzz::run(
            "multipart",
            &seeds,
            fuzz::iterations(1_000_000),
            fuzz::budget(6),
            |bytes| {
                let mut rng = fuzz::Rng::new(bytes.len() as u64);
                let mut parser = Parser::new("b0undary");
                let mut rest = bytes;
                while !rest.is_empty() {
                    let n = 1 + rng.below(rest.len().min(300));
                    if parser.feed(&rest[..n]).is_err() {
                        break;
                    }
                    rest = &rest[n..];
                }
                let _ = parser.finish();
                let text = String::from_utf8_lossy(bytes);
                let (_, params) = media_type(&text);
                let _ = param(&params, "boundary");
                let _ = split_unquoted(&text, ',');
            },
        );
        assert!(summary.executions > 3);
    }
}
