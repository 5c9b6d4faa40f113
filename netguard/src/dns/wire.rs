//! DNS messages, as far as netguard's resolver reads and writes them (RFC 1035): the one
//! question of a query; answers with A/AAAA records; refusals.

use std::net::IpAddr;

const HEADER: usize = 12;
/// Query/response flag.
const QR: u16 = 0x8000;
const OPCODE: u16 = 0x7800;
/// Authoritative answer (netguard answers Docker's names itself, as Docker's resolver does).
const AA: u16 = 0x0400;
/// Recursion desired (copied from the query) and available.
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;
pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// Docker's embedded resolver gives its answers this TTL.
const TTL_SECS: u32 = 600;

/// A response code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    Refused = 5,
}

/// The question of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Recursion desired.
    pub rd: bool,
    /// Lowercase, dot-separated, without the final dot.
    pub name: String,
    pub qtype: u16,
    /// The question section as it came (echoed in the response).
    question: Vec<u8>,
}

impl Query {
    /// The one question of a standard query; `None` for anything else (a response, another
    /// opcode, several questions, compressed or overlong names).
    pub fn parse(message: &[u8]) -> Option<Self> {
        let word = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes([
                *message.get(at)?,
                *message.get(at + 1)?,
            ]))
        };
        let flags = word(2)?;
        if flags & QR != 0 || flags & OPCODE != 0 || word(4)? != 1 {
            return None;
        }
        let mut at = HEADER;
        let mut labels = Vec::new();
        loop {
            let len = usize::from(*message.get(at)?);
            at += 1;
            if len == 0 {
                break;
            }
            // Pointers (0xc0) and the reserved kinds have no place in a question.
            if len > 63 {
                return None;
            }
            let label = message.get(at..at + len)?;
            labels.push(presentation(label));
            at += len;
        }
        let name = labels.join(".");
        if name.len() > 253 {
            return None;
        }
        let qtype = word(at)?;
        let _class = word(at + 2)?;
        Some(Self {
            id: word(0)?,
            rd: flags & RD != 0,
            name,
            qtype,
            question: message[HEADER..at + 4].to_vec(),
        })
    }

    /// The record type, for people: `A`, `AAAA`, or its number.
    pub fn type_text(&self) -> String {
        match self.qtype {
            TYPE_A => "A".into(),
            TYPE_AAAA => "AAAA".into(),
            12 => "PTR".into(),
            15 => "MX".into(),
            16 => "TXT".into(),
            33 => "SRV".into(),
            65 => "HTTPS".into(),
            other => format!("TYPE{other}"),
        }
    }

    /// The answer with `addresses` (those of the query's type; none: no data, not an error).
    pub fn answer(&self, addresses: &[IpAddr]) -> Vec<u8> {
        let records: Vec<&IpAddr> = addresses
            .iter()
            .filter(|a| match a {
                IpAddr::V4(_) => self.qtype == TYPE_A,
                IpAddr::V6(_) => self.qtype == TYPE_AAAA,
            })
            .collect();
        let mut out = self.header(Rcode::NoError, AA, records.len() as u16);
        for address in records {
            // A pointer to the question's name, at offset 12.
            out.extend_from_slice(&[0xc0, 0x0c]);
            let (kind, data) = match address {
                IpAddr::V4(a) => (TYPE_A, a.octets().to_vec()),
                IpAddr::V6(a) => (TYPE_AAAA, a.octets().to_vec()),
            };
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&TTL_SECS.to_be_bytes());
            out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            out.extend_from_slice(&data);
        }
        out
    }

    /// A response with no records and `rcode`.
    pub fn refusal(&self, rcode: Rcode) -> Vec<u8> {
        self.header(rcode, 0, 0)
    }

    fn header(&self, rcode: Rcode, extra_flags: u16, answers: u16) -> Vec<u8> {
        let rd = if self.rd { RD } else { 0 };
        let flags = QR | extra_flags | rd | RA | rcode as u16;
        let mut out = Vec::with_capacity(HEADER + self.question.len() + 28 * answers as usize);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        for count in [1, answers, 0, 0] {
            out.extend_from_slice(&count.to_be_bytes());
        }
        out.extend_from_slice(&self.question);
        out
    }
}

/// A label in presentation form, lowercase: what is not a printable character (and the dot
/// and backslash) as `\DDD`, so that a name never carries control characters into a log
/// or a terminal (`netguard observe`).
fn presentation(label: &[u8]) -> String {
    let mut text = String::with_capacity(label.len());
    for &byte in label {
        match byte {
            b'.' | b'\\' | ..=0x20 | 0x7f.. => text.push_str(&format!("\\{byte:03}")),
            _ => text.push(char::from(byte.to_ascii_lowercase())),
        }
    }
    text
}

/// The response to a message that is not a query netguard can read, if it has an id to
/// answer at all: FORMERR, no question.
pub fn format_error(message: &[u8]) -> Option<Vec<u8>> {
    let id = message.get(..2)?;
    let flags = u16::from_be_bytes([*message.get(2)?, *message.get(3)?]);
    if flags & QR != 0 {
        return None;
    }
    let mut out = id.to_vec();
    out.extend_from_slice(&(QR | RA | Rcode::FormErr as u16).to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    Some(out)
}

/// The id of a message (to match an upstream answer to its query).
pub fn id_of(message: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*message.first()?, *message.get(1)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query as a stub resolver sends it (with an EDNS OPT record after the question).
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut out = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        for label in name.split('.') {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
        out
    }

    #[test]
    fn a_query_is_read_and_answered_with_the_records_of_its_type() {
        let q = Query::parse(&query("Sonarr.Media", TYPE_A)).unwrap();
        assert_eq!(
            (q.id, q.rd, q.name.as_str(), q.qtype),
            (0x1234, true, "sonarr.media", 1)
        );
        let answer = q.answer(&["172.20.0.5".parse().unwrap(), "fd00::5".parse().unwrap()]);
        assert_eq!(&answer[..2], &[0x12, 0x34]);
        assert_eq!(
            u16::from_be_bytes([answer[2], answer[3]]),
            QR | AA | RD | RA
        );
        assert_eq!(
            &answer[4..12],
            &[0, 1, 0, 1, 0, 0, 0, 0],
            "one question, one A record"
        );
        assert_eq!(&answer[answer.len() - 4..], &[172, 20, 0, 5]);
        let six = Query::parse(&query("sonarr", TYPE_AAAA)).unwrap();
        let answer = six.answer(&["172.20.0.5".parse().unwrap()]);
        assert_eq!(
            &answer[6..8],
            &[0, 0],
            "no AAAA record: no data, not an error"
        );
    }

    #[test]
    fn refusals_keep_the_id_and_question_and_say_why() {
        let q = Query::parse(&query("example.test", TYPE_A)).unwrap();
        let refused = q.refusal(Rcode::Refused);
        assert_eq!(&refused[..2], &[0x12, 0x34]);
        assert_eq!(refused[3] & 0x0f, 5);
        assert_eq!(Query::parse(&refused), None, "a response is not a query");
        assert_eq!(&refused[12..], &query("example.test", TYPE_A)[12..30]);
    }

    #[test]
    fn names_are_read_in_presentation_form_without_control_characters() {
        let mut q = query("xx", TYPE_A);
        q[13] = 0x1b;
        q[14] = b'.';
        assert_eq!(Query::parse(&q).unwrap().name, "\\027\\046");
    }

    #[test]
    fn what_is_not_a_plain_query_is_not_read() {
        let mut compressed = query("a.b", TYPE_A);
        compressed[12] = 0xc0;
        assert_eq!(Query::parse(&compressed), None);
        assert_eq!(Query::parse(&query("a", TYPE_A)[..14]), None, "cut short");
        let mut two = query("a", TYPE_A);
        two[5] = 2;
        assert_eq!(Query::parse(&two), None);
        assert_eq!(format_error(&two).unwrap()[3] & 0x0f, 1);
        assert_eq!(format_error(&[1]), None);
    }
}
