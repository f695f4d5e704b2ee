//! Sans-IO TLS ClientHello peek: the SNI and ALPN of a connection, read from
//! the bytes as they arrive, without terminating TLS.
//!
//! An edge that routes by SNI must read the ClientHello before it knows
//! where the connection goes, and it must do so on hostile input: a hello
//! may arrive one byte per TCP segment, be spread over several TLS records
//! (a post-quantum key share makes a 1.9 KB hello that some stacks split),
//! or be garbage. [`Peeker`] is fed the connection's bytes so far and
//! answers [`Peek::Incomplete`], [`Peek::Complete`] or [`Peek::Reject`].
//!
//! Why a hand-written parser rather than `tls-parser` or rustls: the hot
//! path needs an incremental answer on every read, a reject as early as the
//! bytes allow (a record claiming 2^24 bytes is refused on its header, not
//! after buffering), zero copies when the hello fits one record (nearly
//! always), and nothing else parsed. `tls-parser` serves as the oracle in
//! the tests.
//!
//! The answer depends only on the bytes, never on how they were split:
//! every check runs at a fixed position of the stream, so feeding any
//! sequence of prefixes gives the answer the whole input gives. The tests
//! prove it for real captures and for hellos rustls generates.

mod hello;

pub use hello::{Alpn, ClientHello, MAX_SNI_LEN};

/// `ContentType.handshake`.
const HANDSHAKE: u8 = 22;
/// `HandshakeType.client_hello`.
const CLIENT_HELLO: u8 = 1;
/// Plaintext records carry at most 2^14 bytes (RFC 8446 5.1).
pub const MAX_RECORD_PAYLOAD: usize = 16_384;
const RECORD_HEADER: usize = 5;
const HANDSHAKE_HEADER: usize = 4;

/// Why a connection's first bytes are not a ClientHello the edge accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The first record is not a TLS handshake record (HTTP, SSH, a PROXY
    /// header sent by a client, random bytes).
    NotTls,
    /// An SSLv2-format hello, which no supported TLS version accepts.
    Sslv2,
    /// A handshake record whose first message is not a ClientHello.
    NotClientHello,
    /// A length that does not add up, a zero-length or oversized record, a
    /// non-handshake record inside the hello, a duplicate extension.
    Malformed,
    /// The hello needs more bytes than the configured maximum (every byte
    /// read from the client counted, record headers included).
    TooLarge,
    /// A `server_name` extension that is empty, has several host names, or
    /// a name that is not 1-255 bytes of letters, digits, `-`, `.`, `_`.
    InvalidSni,
}

impl Reason {
    /// A stable snake_case label, used for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::NotTls => "not_tls",
            Reason::Sslv2 => "sslv2",
            Reason::NotClientHello => "not_client_hello",
            Reason::Malformed => "malformed_hello",
            Reason::TooLarge => "hello_too_large",
            Reason::InvalidSni => "invalid_sni",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for Reason {}

/// The answer to one [`Peeker::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek<'a> {
    /// More bytes are needed: the hello cannot complete with fewer than
    /// `needed` more (a reject may come sooner; feed whatever arrives).
    Incomplete { needed: usize },
    /// The ClientHello is complete and well formed.
    Complete(ClientHello<'a>),
    /// The bytes can never become an acceptable ClientHello.
    Reject(Reason),
}

/// Incremental ClientHello reader for one connection.
///
/// Feed it the connection's bytes so far, each call with a buffer that
/// extends the previous one; bytes already examined are not looked at
/// again. A hello inside one record is parsed where it lies; only a hello
/// spread over several records is copied, once, into a buffer of its size.
#[derive(Debug)]
pub struct Peeker {
    max_bytes: usize,
    /// Bytes of the input consumed (record headers and hello bytes).
    pos: usize,
    /// Payload bytes left in the current record; 0 before a header.
    record_left: usize,
    records: u32,
    /// Input offset of the first record's payload.
    first_payload: usize,
    /// Handshake bytes absorbed so far.
    hs_have: usize,
    /// Length of the whole handshake message, once its header is read.
    hs_need: Option<usize>,
    /// The handshake bytes, once the message crosses a record boundary.
    reassembled: Vec<u8>,
    verdict: Option<Reason>,
}

enum Step {
    Incomplete(usize),
    Complete,
    Reject(Reason),
}

impl Peeker {
    /// A peeker that rejects any hello needing more than `max_bytes` bytes.
    pub fn new(max_bytes: usize) -> Self {
        Peeker {
            max_bytes,
            pos: 0,
            record_left: 0,
            records: 0,
            first_payload: RECORD_HEADER,
            hs_have: 0,
            hs_need: None,
            reassembled: Vec::new(),
            verdict: None,
        }
    }

    /// Examines `input`, every byte received so far, and answers.
    ///
    /// A buffer shorter than one already fed is a caller error; it is
    /// answered `Incomplete` rather than trusted.
    pub fn feed<'a>(&'a mut self, input: &'a [u8]) -> Peek<'a> {
        if let Some(reason) = self.verdict {
            return Peek::Reject(reason);
        }
        if input.len() < self.pos {
            return Peek::Incomplete {
                needed: self.pos - input.len(),
            };
        }
        match self.advance(input) {
            Step::Incomplete(needed) => Peek::Incomplete { needed },
            Step::Reject(reason) => {
                self.verdict = Some(reason);
                Peek::Reject(reason)
            }
            Step::Complete => {
                let need = self.hs_need.unwrap_or(0);
                let message = if self.records > 1 {
                    &self.reassembled[..need]
                } else {
                    &input[self.first_payload..self.first_payload + need]
                };
                match hello::parse(message) {
                    Ok(hello) => Peek::Complete(hello),
                    Err(reason) => {
                        self.verdict = Some(reason);
                        Peek::Reject(reason)
                    }
                }
            }
        }
    }

    /// Number of TLS records the hello has used so far.
    pub fn records(&self) -> u32 {
        self.records
    }

    fn advance(&mut self, input: &[u8]) -> Step {
        loop {
            if self.hs_need.is_some_and(|need| self.hs_have >= need) {
                return Step::Complete;
            }
            if self.record_left == 0 {
                if let Err(step) = self.record_header(input) {
                    return step;
                }
            }
            let available = self.record_left.min(input.len() - self.pos);
            if available == 0 {
                return Step::Incomplete(1);
            }
            // Absorb the handshake header alone first, so its checks run at
            // the same stream position however the bytes were split.
            let wanted = match self.hs_need {
                Some(need) => need - self.hs_have,
                None => HANDSHAKE_HEADER - self.hs_have,
            };
            let take = available.min(wanted);
            if self.records > 1 {
                self.reassembled
                    .extend_from_slice(&input[self.pos..self.pos + take]);
            }
            self.pos += take;
            self.record_left -= take;
            self.hs_have += take;
            if self.hs_need.is_none() {
                if let Err(reason) = self.handshake_header(input) {
                    return Step::Reject(reason);
                }
            }
        }
    }

    /// Reads and checks the next record header, or says what is missing.
    fn record_header(&mut self, input: &[u8]) -> Result<(), Step> {
        let rest = &input[self.pos..];
        if self.records == 0 {
            if let Some(reason) = sniff_first_record(rest) {
                return Err(Step::Reject(reason));
            }
        }
        let Some(header) = rest.get(..RECORD_HEADER) else {
            return Err(Step::Incomplete(RECORD_HEADER - rest.len()));
        };
        if header[0] != HANDSHAKE || header[1] != 3 {
            return Err(Step::Reject(Reason::Malformed));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD_PAYLOAD {
            return Err(Step::Reject(Reason::Malformed));
        }
        let wanted = match self.hs_need {
            Some(need) => need - self.hs_have,
            None => HANDSHAKE_HEADER - self.hs_have,
        };
        if self.pos + RECORD_HEADER + len.min(wanted) > self.max_bytes {
            return Err(Step::Reject(Reason::TooLarge));
        }
        if self.records == 1 {
            // The hello crosses a record boundary: from here on it is
            // reassembled, sized once from its header when known.
            let start = self.first_payload;
            self.reassembled
                .reserve_exact(self.hs_need.unwrap_or(HANDSHAKE_HEADER));
            self.reassembled
                .extend_from_slice(&input[start..start + self.hs_have]);
        }
        self.records += 1;
        self.pos += RECORD_HEADER;
        self.record_left = len;
        Ok(())
    }

    /// Checks the handshake header as far as it has arrived.
    fn handshake_header(&mut self, input: &[u8]) -> Result<(), Reason> {
        if self.hs_have == 0 {
            return Ok(());
        }
        let first = if self.records > 1 {
            self.reassembled[0]
        } else {
            input[self.first_payload]
        };
        if first != CLIENT_HELLO {
            return Err(Reason::NotClientHello);
        }
        if self.hs_have < HANDSHAKE_HEADER {
            return Ok(());
        }
        let header = if self.records > 1 {
            &self.reassembled[..HANDSHAKE_HEADER]
        } else {
            &input[self.first_payload..self.first_payload + HANDSHAKE_HEADER]
        };
        let body =
            usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
        let need = HANDSHAKE_HEADER + body;
        // The fewest bytes the rest of the hello can take: what remains of
        // this record, then full records with a header each.
        let remaining = need - self.hs_have;
        let beyond = remaining.saturating_sub(self.record_left);
        let headers = beyond.div_ceil(MAX_RECORD_PAYLOAD) * RECORD_HEADER;
        if self.pos + remaining + headers > self.max_bytes {
            return Err(Reason::TooLarge);
        }
        if self.records > 1 {
            self.reassembled
                .reserve_exact(need - self.reassembled.len());
        }
        self.hs_need = Some(need);
        Ok(())
    }
}

/// Classifies the start of a connection before a full record header is
/// needed: `GET /`, `SSH-2.0`, a PROXY header or an SSLv2 hello are refused
/// on their first bytes.
fn sniff_first_record(bytes: &[u8]) -> Option<Reason> {
    let &first = bytes.first()?;
    if first == HANDSHAKE {
        return match (bytes.get(1), bytes.get(2)) {
            (Some(&major), _) if major != 3 => Some(Reason::NotTls),
            (_, Some(&minor)) if minor > 4 => Some(Reason::NotTls),
            _ => None,
        };
    }
    if first & 0x80 != 0 {
        // SSLv2 record: two-byte length with the top bit set, then
        // msg_type 1 (CLIENT-HELLO).
        return match bytes.get(2) {
            Some(&CLIENT_HELLO) => Some(Reason::Sslv2),
            Some(_) => Some(Reason::NotTls),
            None => None,
        };
    }
    Some(Reason::NotTls)
}

#[cfg(test)]
mod tests;
