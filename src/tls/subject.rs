//! A certificate's subject as text: the distinguished name in RFC 4514's string form
//! (`CN=client.example,O=Example Org,C=FR`: the last RDN first, as LDAP and Go write it),
//! the form an operator greps for in a log and a hook compares.
//!
//! rustls-webpki finds the subject in the certificate; this turns its DER into text. A
//! full X.509 parser would cost a dependency tree (x509-parser brings nom, der-parser,
//! asn1-rs, time) for the one walk over `SEQUENCE OF SET OF SEQUENCE { OID, string }`
//! done here.

use std::fmt::Write;

use rustls::pki_types::CertificateDer;

/// The subject of the DER certificate `der`, as RFC 4514 text; `None` if it is not a
/// certificate webpki can read, or its subject is not a well-formed name.
pub fn of_certificate(der: &[u8]) -> Option<String> {
    let der = CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    name_to_text(cert.subject())
}

/// An RDNSequence's contents (without the outer `SEQUENCE` header) as RFC 4514 text.
pub fn name_to_text(mut name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (set, rest) = element(name, SET)?;
        name = rest;
        let mut attributes = Vec::new();
        let mut set = set;
        while !set.is_empty() {
            let (pair, rest) = element(set, SEQUENCE)?;
            set = rest;
            let (oid, value) = element(pair, OID)?;
            let (tag, contents, rest) = any(value)?;
            if !rest.is_empty() {
                return None;
            }
            attributes.push(format!(
                "{}={}",
                attribute_name(oid),
                value_text(tag, contents)?
            ));
        }
        rdns.push(attributes.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;

/// The first element of `der`, which must have tag `tag`: (its contents, what follows).
fn element(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match any(der)? {
        (t, contents, rest) if t == tag => Some((contents, rest)),
        _ => None,
    }
}

/// The first element of `der`: (tag, contents, what follows). Definite lengths only
/// (DER has no others), single-byte tags.
fn any(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let bytes = usize::from(first & 0x7f);
        if bytes == 0 || bytes > 4 || rest.len() < bytes {
            return None;
        }
        let (len, after) = rest.split_at(bytes);
        rest = after;
        len.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b))
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// RFC 4514's names for the attribute types it lists, then emailAddress (OpenSSL's); any
/// other as its dotted OID.
fn attribute_name(oid: &[u8]) -> String {
    let known: &[(&[u8], &str)] = &[
        (&[0x55, 0x04, 0x03], "CN"),
        (&[0x55, 0x04, 0x07], "L"),
        (&[0x55, 0x04, 0x08], "ST"),
        (&[0x55, 0x04, 0x0a], "O"),
        (&[0x55, 0x04, 0x0b], "OU"),
        (&[0x55, 0x04, 0x06], "C"),
        (&[0x55, 0x04, 0x09], "STREET"),
        (
            &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
            "DC",
        ),
        (
            &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01],
            "UID",
        ),
        (
            &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
            "emailAddress",
        ),
    ];
    match known.iter().find(|(bytes, _)| *bytes == oid) {
        Some((_, name)) => (*name).to_owned(),
        None => dotted(oid),
    }
}

/// An OID's contents as `1.2.840...`.
fn dotted(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut arc: u64 = 0;
    for &b in oid {
        arc = (arc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(arc);
            arc = 0;
        }
    }
    let mut text = String::new();
    if let Some(&first) = arcs.first() {
        let (a, b) = match first {
            0..40 => (0, first),
            40..80 => (1, first - 40),
            _ => (2, first - 80),
        };
        let _ = write!(text, "{a}.{b}");
    }
    for arc in arcs.iter().skip(1) {
        let _ = write!(text, ".{arc}");
    }
    text
}

/// A value as RFC 4514 text: a string type decoded and escaped, anything else as `#`
/// and the hex of its whole DER encoding.
fn value_text(tag: u8, contents: &[u8]) -> Option<String> {
    let text = match tag {
        // UTF8String, PrintableString, IA5String, NumericString, VisibleString
        0x0c | 0x13 | 0x16 | 0x12 | 0x1a => String::from_utf8(contents.to_vec()).ok()?,
        // TeletexString: Latin-1 in practice
        0x14 => contents.iter().map(|&b| char::from(b)).collect(),
        // BMPString: UTF-16BE
        0x1e => {
            let units: Vec<u16> = contents
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()?
        }
        // UniversalString: UTF-32BE
        0x1c => contents
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect::<Option<String>>()?,
        _ => {
            let mut hex = format!("#{tag:02x}");
            let len = contents.len();
            if len < 0x80 {
                let _ = write!(hex, "{len:02x}");
            } else {
                let bytes = len.to_be_bytes();
                let skip = bytes.iter().take_while(|&&b| b == 0).count();
                let _ = write!(hex, "{:02x}", 0x80 | (bytes.len() - skip));
                for b in &bytes[skip..] {
                    let _ = write!(hex, "{b:02x}");
                }
            }
            for b in contents {
                let _ = write!(hex, "{b:02x}");
            }
            return Some(hex);
        }
    };
    Some(escape(&text))
}

/// RFC 4514 section 2.4: `,+"\<>;` escaped anywhere, `#` and space at the start, space
/// at the end, NUL as `\00`.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One attribute (OID contents, string tag, value) as a DER RDN.
    fn rdn(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        let mut atv = vec![OID, oid.len() as u8];
        atv.extend_from_slice(oid);
        atv.extend_from_slice(&[tag, value.len() as u8]);
        atv.extend_from_slice(value);
        let mut seq = vec![SEQUENCE, atv.len() as u8];
        seq.extend(atv);
        let mut set = vec![SET, seq.len() as u8];
        set.extend(seq);
        set
    }

    #[test]
    fn the_last_rdn_comes_first_with_rfc4514_names() {
        let mut name = rdn(&[0x55, 0x04, 0x06], 0x13, b"FR");
        name.extend(rdn(&[0x55, 0x04, 0x0a], 0x0c, b"Example Org"));
        name.extend(rdn(&[0x55, 0x04, 0x03], 0x0c, b"client.example"));
        assert_eq!(
            name_to_text(&name).unwrap(),
            "CN=client.example,O=Example Org,C=FR"
        );
    }

    #[test]
    fn specials_are_escaped_and_unknown_types_are_dotted() {
        let mut name = rdn(&[0x55, 0x04, 0x03], 0x0c, b" Doe, John+\"x\" ");
        name.extend(rdn(
            &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37],
            0x0c,
            b"#1",
        ));
        assert_eq!(
            name_to_text(&name).unwrap(),
            "1.3.6.1.4.1.311=\\#1,CN=\\ Doe\\, John\\+\\\"x\\\"\\ "
        );
    }

    #[test]
    fn a_bmp_string_is_decoded_and_a_non_string_is_hex() {
        let mut name = rdn(&[0x55, 0x04, 0x03], 0x1e, &[0x00, b'h', 0x00, 0xe9]);
        name.extend(rdn(&[0x55, 0x04, 0x2e], 0x02, &[0x01]));
        assert_eq!(name_to_text(&name).unwrap(), "2.5.4.46=#020101,CN=hé");
    }

    #[test]
    fn a_truncated_name_is_none() {
        let name = rdn(&[0x55, 0x04, 0x03], 0x0c, b"client");
        assert_eq!(name_to_text(&name[..name.len() - 1]), None);
        assert_eq!(name_to_text(&[]), Some(String::new()));
    }
}
