//! The ClientHello body (RFC 8446 4.1.2, RFC 5246 7.4.1.2): everything after
//! the four-byte handshake header, parsed zero-copy into the two fields the
//! edge routes and reports on.

use crate::Reason;

/// `server_name` (RFC 6066 section 3).
const EXT_SERVER_NAME: u16 = 0;
/// `application_layer_protocol_negotiation` (RFC 7301).
const EXT_ALPN: u16 = 16;
/// The longest host name RFC 6066 allows in one `HostName`.
pub const MAX_SNI_LEN: usize = 255;

/// A complete, well-formed ClientHello. Borrows the bytes it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHello<'a> {
    legacy_version: u16,
    sni: Option<&'a str>,
    alpn: &'a [u8],
    len: usize,
}

impl<'a> ClientHello<'a> {
    /// The `host_name` of the `server_name` extension, exactly as sent
    /// (case and any trailing dot preserved).
    pub fn sni(&self) -> Option<&'a str> {
        self.sni
    }

    /// The ALPN protocols offered, in the client's order.
    pub fn alpn(&self) -> Alpn<'a> {
        Alpn { rest: self.alpn }
    }

    /// `legacy_version` of the hello (0x0303 for TLS 1.2 and 1.3).
    pub fn legacy_version(&self) -> u16 {
        self.legacy_version
    }

    /// Length of the handshake message, header included.
    pub fn handshake_len(&self) -> usize {
        self.len
    }
}

/// Iterator over the protocol names of an ALPN extension.
#[derive(Debug, Clone)]
pub struct Alpn<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Alpn<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (&len, rest) = self.rest.split_first()?;
        let name = rest.get(..usize::from(len))?;
        self.rest = &rest[usize::from(len)..];
        Some(name)
    }
}

/// A bounds-checked cursor: every read either succeeds or reports
/// `Malformed`, so no length field can index out of the message.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Reason> {
        if n > self.bytes.len() {
            return Err(Reason::Malformed);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Reason> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Reason> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Result<&'a [u8], Reason> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Result<&'a [u8], Reason> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Parses a ClientHello body (`message` is the whole handshake message,
/// header included; its type and length are already checked).
pub fn parse(message: &[u8]) -> Result<ClientHello<'_>, Reason> {
    let mut r = Reader {
        bytes: &message[4..],
    };
    let legacy_version = r.u16()?;
    if legacy_version >> 8 != 3 {
        return Err(Reason::Malformed);
    }
    r.take(32)?; // random
    if r.vec8()?.len() > 32 {
        return Err(Reason::Malformed); // legacy_session_id
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Reason::Malformed);
    }
    if r.vec8()?.is_empty() {
        return Err(Reason::Malformed); // legacy_compression_methods
    }
    let mut hello = ClientHello {
        legacy_version,
        sni: None,
        alpn: &[],
        len: message.len(),
    };
    if r.is_empty() {
        return Ok(hello); // a TLS 1.0-1.2 hello may carry no extensions
    }
    let mut exts = Reader { bytes: r.vec16()? };
    if !r.is_empty() {
        return Err(Reason::Malformed);
    }
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !exts.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        match kind {
            EXT_SERVER_NAME => {
                if std::mem::replace(&mut seen_sni, true) {
                    return Err(Reason::Malformed); // RFC 8446 4.2: no duplicates
                }
                hello.sni = server_name(data)?;
            }
            EXT_ALPN => {
                if std::mem::replace(&mut seen_alpn, true) {
                    return Err(Reason::Malformed);
                }
                hello.alpn = alpn_list(data)?;
            }
            _ => {}
        }
    }
    Ok(hello)
}

/// The `server_name` extension: exactly one `host_name` of 1-255 bytes of
/// letters, digits, `-`, `.` or `_`. Anything else is `InvalidSni`, so a
/// name with a NUL, a space or non-ASCII bytes never reaches the lookup.
fn server_name(data: &[u8]) -> Result<Option<&str>, Reason> {
    let mut ext = Reader { bytes: data };
    let list = ext.vec16().map_err(|_| Reason::InvalidSni)?;
    if !ext.is_empty() || list.is_empty() {
        return Err(Reason::InvalidSni);
    }
    let mut entries = Reader { bytes: list };
    let mut host = None;
    while !entries.is_empty() {
        let name_type = entries.u8().map_err(|_| Reason::InvalidSni)?;
        let name = entries.vec16().map_err(|_| Reason::InvalidSni)?;
        if name_type != 0 {
            continue; // RFC 6066 leaves room for other name types; none exist
        }
        if host.is_some() || !valid_host_name(name) {
            return Err(Reason::InvalidSni);
        }
        host = Some(name);
    }
    let Some(host) = host else {
        return Err(Reason::InvalidSni);
    };
    // Checked above to be ASCII, so this cannot fail.
    std::str::from_utf8(host)
        .map(Some)
        .map_err(|_| Reason::InvalidSni)
}

fn valid_host_name(name: &[u8]) -> bool {
    (1..=MAX_SNI_LEN).contains(&name.len())
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// The ALPN extension: a non-empty list of non-empty protocol names that
/// exactly fills it (RFC 7301 3.1).
fn alpn_list(data: &[u8]) -> Result<&[u8], Reason> {
    let mut ext = Reader { bytes: data };
    let list = ext.vec16()?;
    if !ext.is_empty() || list.is_empty() {
        return Err(Reason::Malformed);
    }
    let mut names = Reader { bytes: list };
    while !names.is_empty() {
        if names.vec8()?.is_empty() {
            return Err(Reason::Malformed);
        }
    }
    Ok(list)
}
