//! The on-disk record format of a queue log (format version [`FORMAT_VERSION`]).
//!
//! A segment file starts with a 16-octet header: the magic `WRNSEG\r\n`, the format version (u32 LE) and
//! four reserved zero octets. Records follow back to back:
//!
//! ```text
//! magic  u32 LE  0x4345_5257 ("WREC")
//! len    u32 LE  payload length
//! crc    u32 LE  CRC-32 (IEEE) of the payload
//! payload:
//!   kind u8 = 1 Publish:  seq u64, flags u8 (bit 0 persistent), expires_at u64 (ms since the Unix
//!                          epoch, 0 = never), exchange (u8 len + bytes), routing key (u8 len + bytes),
//!                          properties (u32 len + content-header property octets), body (the rest)
//!   kind u8 = 2 Ack:      first seq u64, last seq u64, count u64, bytes u64 (a range of settled
//!                          persistent messages; count and body octets are informational)
//!   kind u8 = 3 Deliver:  seq u64 (first delivery of a persistent message)
//! ```
//!
//! All integers are little-endian. A record is valid when its magic, length and CRC agree; anything else
//! is skipped by [`Scanner`], which resynchronises on the next magic.

use amq_protocol::types::ShortString;
use bytes::{Buf, BufMut, Bytes};

/// Version of the data directory and segment format; a newer one is refused at start.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// First octets of every segment file.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"WRNSEG\r\n";
/// Length of the segment header.
pub(crate) const SEGMENT_HEADER_LEN: usize = 16;
/// First four octets of every record.
pub(crate) const RECORD_MAGIC: u32 = 0x4345_5257;
/// Record header length: magic, length, CRC.
pub(crate) const RECORD_HEADER_LEN: usize = 12;
/// Largest payload a reader accepts (larger lengths are corruption): 512 MiB body plus metadata.
pub(crate) const MAX_PAYLOAD: usize = 512 * 1024 * 1024 + 70_000;

const KIND_PUBLISH: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_DELIVER: u8 = 3;

/// The segment header for the current format.
pub(crate) fn segment_header() -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// The format version in a segment header, or `None` if the octets are not a segment header.
pub(crate) fn segment_version(header: &[u8]) -> Option<u32> {
    if header.len() < SEGMENT_HEADER_LEN || &header[..8] != SEGMENT_MAGIC {
        return None;
    }
    Some(u32::from_le_bytes([
        header[8], header[9], header[10], header[11],
    ]))
}

/// A published message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPublish {
    /// Queue sequence number (arrival order).
    pub seq: u64,
    /// `delivery_mode = 2`: recovered after a restart. Transient records exist only while paged out.
    pub persistent: bool,
    /// Expiry as ms since the Unix epoch; 0 = never.
    pub expires_at: u64,
    /// Exchange the message was published to.
    pub exchange: Bytes,
    /// Routing key it was published with.
    pub routing_key: Bytes,
    /// Content-header properties as on the wire (property flags onwards).
    pub properties: Bytes,
    /// Body.
    pub body: Bytes,
}

impl StoredPublish {
    /// The exchange name, as a short string (lossy: a log written by this broker holds valid UTF-8).
    pub fn exchange_name(&self) -> ShortString {
        lossy_short(&self.exchange)
    }

    /// The routing key, as a short string (lossy, like [`StoredPublish::exchange_name`]).
    pub fn routing_key_name(&self) -> ShortString {
        lossy_short(&self.routing_key)
    }
}

fn lossy_short(b: &[u8]) -> ShortString {
    ShortString::try_new(String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// A message entered the queue.
    Publish(StoredPublish),
    /// Persistent messages `first..=last` left the queue (ack, expiry, dead-lettering, purge…).
    Ack {
        /// First sequence number of the range.
        first: u64,
        /// Last sequence number of the range (inclusive).
        last: u64,
        /// Persistent messages in the range.
        count: u64,
        /// Their body octets.
        bytes: u64,
    },
    /// A persistent message was delivered for the first time.
    Deliver {
        /// Its sequence number.
        seq: u64,
    },
}

fn frame(out: &mut Vec<u8>, payload_len: usize, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.put_u32_le(RECORD_MAGIC);
    out.put_u32_le(payload_len as u32);
    out.put_u32_le(0);
    write(out);
    let crc = crc32fast::hash(&out[start + RECORD_HEADER_LEN..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// The fields of a message to append (borrowed, so nothing is copied before encoding).
#[derive(Debug)]
pub struct PublishRef<'a> {
    /// Queue sequence number.
    pub seq: u64,
    /// Recovered after restart.
    pub persistent: bool,
    /// Expiry, ms since the Unix epoch; 0 = never.
    pub expires_at: u64,
    /// Exchange name (an AMQP short string, at most 255 octets).
    pub exchange: &'a [u8],
    /// Routing key (at most 255 octets).
    pub routing_key: &'a [u8],
    /// Encoded properties.
    pub properties: &'a [u8],
    /// Body.
    pub body: &'a [u8],
}

/// Appends a Publish record.
pub(crate) fn encode_publish(out: &mut Vec<u8>, p: &PublishRef<'_>) {
    let len =
        1 + 8 + 1 + 8 + 1 + p.exchange.len() + 1 + p.routing_key.len() + 4 + p.properties.len();
    frame(out, len + p.body.len(), |out| {
        out.put_u8(KIND_PUBLISH);
        out.put_u64_le(p.seq);
        out.put_u8(u8::from(p.persistent));
        out.put_u64_le(p.expires_at);
        out.put_u8(p.exchange.len() as u8);
        out.put_slice(p.exchange);
        out.put_u8(p.routing_key.len() as u8);
        out.put_slice(p.routing_key);
        out.put_u32_le(p.properties.len() as u32);
        out.put_slice(p.properties);
        out.put_slice(p.body);
    });
}

/// Appends an Ack record for `first..=last`.
pub(crate) fn encode_ack(out: &mut Vec<u8>, first: u64, last: u64, count: u64, bytes: u64) {
    frame(out, 33, |out| {
        out.put_u8(KIND_ACK);
        out.put_u64_le(first);
        out.put_u64_le(last);
        out.put_u64_le(count);
        out.put_u64_le(bytes);
    });
}

/// Appends a Deliver record.
pub(crate) fn encode_deliver(out: &mut Vec<u8>, seq: u64) {
    frame(out, 9, |out| {
        out.put_u8(KIND_DELIVER);
        out.put_u64_le(seq);
    });
}

/// Decodes a payload whose CRC has been checked. `None` if it is malformed (an unknown kind, lengths
/// that do not fit), which readers treat like a CRC failure.
pub(crate) fn decode(mut p: Bytes) -> Option<Record> {
    let need = |p: &Bytes, n: usize| (p.remaining() >= n).then_some(());
    need(&p, 1)?;
    match p.get_u8() {
        KIND_PUBLISH => {
            need(&p, 18)?;
            let seq = p.get_u64_le();
            let persistent = p.get_u8() & 1 == 1;
            let expires_at = p.get_u64_le();
            let n = p.get_u8() as usize;
            need(&p, n + 1)?;
            let exchange = p.split_to(n);
            let n = p.get_u8() as usize;
            need(&p, n + 4)?;
            let routing_key = p.split_to(n);
            let n = p.get_u32_le() as usize;
            need(&p, n)?;
            let properties = p.split_to(n);
            Some(Record::Publish(StoredPublish {
                seq,
                persistent,
                expires_at,
                exchange,
                routing_key,
                properties,
                body: p,
            }))
        }
        KIND_ACK if p.remaining() == 32 => Some(Record::Ack {
            first: p.get_u64_le(),
            last: p.get_u64_le(),
            count: p.get_u64_le(),
            bytes: p.get_u64_le(),
        }),
        KIND_DELIVER if p.remaining() == 8 => Some(Record::Deliver {
            seq: p.get_u64_le(),
        }),
        _ => None,
    }
}

/// What [`Scanner::next_item`] found at the current position.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scanned {
    /// A valid record starting at `offset`, `len` octets long in all.
    Record {
        /// File offset of the record.
        offset: u64,
        /// Header plus payload length.
        len: u64,
        /// The decoded record.
        record: Record,
    },
    /// Octets `offset..offset + len` hold no valid record (corruption); scanning resumed after them.
    Corrupt {
        /// Where the bad region starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// Record magics seen inside it (an estimate of the records lost).
        records: u64,
    },
    /// The data ends at `offset` with an incomplete record of `len` octets (a torn write), or more
    /// data is needed.
    Incomplete {
        /// Where the incomplete record starts.
        offset: u64,
        /// Octets present after it.
        len: u64,
    },
    /// The data ends cleanly at `offset`.
    End {
        /// End offset.
        offset: u64,
    },
    /// Only zero octets from `offset` to the end of the data: the unwritten, preallocated end of a
    /// segment.
    Zeros {
        /// Where the zeros start.
        offset: u64,
    },
}

/// Walks the records of a buffer that holds a file's octets from `base` onwards.
#[derive(Debug)]
pub(crate) struct Scanner {
    /// File offset of `data[0]`.
    pub base: u64,
    /// The octets.
    pub data: Bytes,
    /// Position in `data`.
    pub pos: usize,
}

impl Scanner {
    /// A scanner over `data`, which starts at file offset `base`.
    pub(crate) fn new(base: u64, data: Bytes) -> Self {
        Scanner { base, data, pos: 0 }
    }

    /// A valid record at `at`: `Ok(Some((len, record)))`, `Ok(None)` if the data ends inside it,
    /// `Err(())` if it is not a valid record.
    #[allow(clippy::result_unit_err)]
    fn record_at(&self, at: usize) -> Result<Option<(usize, Record)>, ()> {
        let d = &self.data[at..];
        if d.len() < 4 {
            return if d.is_empty() || RECORD_MAGIC.to_le_bytes().starts_with(d) {
                Ok(None)
            } else {
                Err(())
            };
        }
        if u32::from_le_bytes([d[0], d[1], d[2], d[3]]) != RECORD_MAGIC {
            return Err(());
        }
        if d.len() < RECORD_HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_le_bytes([d[4], d[5], d[6], d[7]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(());
        }
        if d.len() < RECORD_HEADER_LEN + len {
            return Ok(None);
        }
        let crc = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
        let payload = &d[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
        if crc32fast::hash(payload) != crc {
            return Err(());
        }
        let start = at + RECORD_HEADER_LEN;
        match decode(self.data.slice(start..start + len)) {
            Some(r) => Ok(Some((RECORD_HEADER_LEN + len, r))),
            None => Err(()),
        }
    }

    /// The next item. After `Incomplete`, `End` or `Zeros` the scanner stays where it is.
    pub(crate) fn next_item(&mut self) -> Scanned {
        let offset = self.base + self.pos as u64;
        let rest = &self.data[self.pos..];
        if rest.len() >= 4 && rest[..4] == [0; 4] && rest.iter().all(|&b| b == 0) {
            return Scanned::Zeros { offset };
        }
        match self.record_at(self.pos) {
            Ok(Some((len, record))) => {
                self.pos += len;
                Scanned::Record {
                    offset,
                    len: len as u64,
                    record,
                }
            }
            Ok(None) if self.pos == self.data.len() => Scanned::End { offset },
            Ok(None) => Scanned::Incomplete {
                offset,
                len: (self.data.len() - self.pos) as u64,
            },
            Err(()) => {
                // Resynchronise: the next offset holding a valid (or possibly valid, incomplete) record.
                let magic = RECORD_MAGIC.to_le_bytes();
                let mut records = 1;
                let mut at = self.pos + 1;
                while at < self.data.len() {
                    if self.data[at..].starts_with(&magic[..magic.len().min(self.data.len() - at)])
                    {
                        match self.record_at(at) {
                            Ok(_) => break,
                            Err(()) => records += 1,
                        }
                    }
                    at += 1;
                }
                let len = (at - self.pos) as u64;
                self.pos = at;
                Scanned::Corrupt {
                    offset,
                    len,
                    records,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        encode_publish(
            &mut out,
            &PublishRef {
                seq: 7,
                persistent: true,
                expires_at: 0,
                exchange: b"x",
                routing_key: b"rk",
                properties: b"\x00\x00",
                body: b"hello",
            },
        );
        encode_deliver(&mut out, 7);
        encode_ack(&mut out, 7, 7, 1, 5);
        out
    }

    fn scan_all(data: Vec<u8>) -> Vec<Scanned> {
        let mut s = Scanner::new(16, Bytes::from(data));
        let mut out = Vec::new();
        loop {
            let item = s.next_item();
            let stop = matches!(
                item,
                Scanned::End { .. } | Scanned::Incomplete { .. } | Scanned::Zeros { .. }
            );
            out.push(item);
            if stop {
                return out;
            }
        }
    }

    #[test]
    fn records_round_trip() {
        let items = scan_all(sample());
        assert_eq!(items.len(), 4);
        let Scanned::Record {
            record: Record::Publish(p),
            offset: 16,
            ..
        } = &items[0]
        else {
            panic!("{items:?}")
        };
        assert_eq!((p.seq, p.persistent, &p.body[..]), (7, true, &b"hello"[..]));
        assert_eq!(
            (&p.exchange[..], &p.routing_key[..]),
            (&b"x"[..], &b"rk"[..])
        );
        assert!(matches!(
            items[2],
            Scanned::Record {
                record: Record::Ack {
                    first: 7,
                    last: 7,
                    count: 1,
                    bytes: 5
                },
                ..
            }
        ));
        assert!(matches!(items[3], Scanned::End { .. }));
    }

    #[test]
    fn torn_tail_is_incomplete_at_every_cut() {
        let data = sample();
        let first_len = match &scan_all(data.clone())[0] {
            Scanned::Record { len, .. } => *len as usize,
            other => panic!("{other:?}"),
        };
        for cut in first_len + 1..first_len + 21 {
            let items = scan_all(data[..cut].to_vec());
            assert!(matches!(items[0], Scanned::Record { .. }), "cut {cut}");
            assert!(
                matches!(items.last(), Some(Scanned::Incomplete { offset, .. }) if *offset == 16 + first_len as u64),
                "cut {cut}: {items:?}"
            );
        }
    }

    #[test]
    fn a_preallocated_zero_tail_ends_the_data() {
        let mut data = sample();
        let end = 16 + data.len() as u64;
        data.extend_from_slice(&[0; 100]);
        let items = scan_all(data);
        assert_eq!(items.len(), 4);
        assert_eq!(items[3], Scanned::Zeros { offset: end });
    }

    #[test]
    fn a_corrupt_record_in_the_middle_is_skipped() {
        let mut data = sample();
        data[30] ^= 0xff; // inside the publish payload
        let items = scan_all(data);
        assert!(
            matches!(
                items[0],
                Scanned::Corrupt {
                    offset: 16,
                    records: 1,
                    ..
                }
            ),
            "{items:?}"
        );
        assert!(matches!(
            items[1],
            Scanned::Record {
                record: Record::Deliver { seq: 7 },
                ..
            }
        ));
        assert!(matches!(items[2], Scanned::Record { .. }));
    }
}
