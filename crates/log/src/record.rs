//! The on-disk record format, free of I/O.
//!
//! ```text
//! segment file := header record*
//! header       := magic "SFLOGv1\n" (8 bytes) | base offset u64 LE
//! record       := len u32 LE | crc u32 LE | body            crc = CRC32C(body), len = |body|
//! body         := offset u64 | timestamp_ms i64 | key_len i32 (-1: no key) | key
//!                 | header_count u16 | (name_len u16 | name | value_len u32 | value)*
//!                 | value_len u32 | value
//! ```
//! Every integer is little-endian. A record is accepted only when its length is in bounds, its
//! CRC matches, its fields fill the body exactly, and its offset is the one expected next.

use bytes::{BufMut, Bytes};

pub(crate) const MAGIC: &[u8; 8] = b"SFLOGv1\n";
pub(crate) const SEGMENT_HEADER_LEN: u64 = 16;
pub(crate) const RECORD_HEADER_LEN: usize = 8;
/// Largest body accepted when reading, whatever the configuration: a length above this is
/// corruption, not a record.
pub(crate) const MAX_BODY_LEN: usize = 64 * 1024 * 1024;

/// A decoded record, its byte fields sharing the buffer it was read from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decoded {
    pub(crate) offset: u64,
    pub(crate) timestamp_ms: i64,
    pub(crate) key: Option<Bytes>,
    pub(crate) headers: Vec<(String, Bytes)>,
    pub(crate) value: Bytes,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Fewer bytes than the record claims: a torn write at the tail, or more must be read.
    Incomplete { needed: usize },
    /// The bytes are there but wrong.
    Corrupt(&'static str),
}

pub(crate) fn segment_header(base_offset: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&base_offset.to_le_bytes());
    h
}

pub(crate) fn parse_segment_header(h: &[u8]) -> Option<u64> {
    if h.len() < SEGMENT_HEADER_LEN as usize || &h[..8] != MAGIC {
        return None;
    }
    Some(u64::from_le_bytes(h[8..16].try_into().ok()?))
}

/// Size of the encoded record.
pub(crate) fn encoded_len(key: Option<&[u8]>, headers: &[(String, Bytes)], value: &[u8]) -> usize {
    RECORD_HEADER_LEN
        + 8
        + 8
        + 4
        + key.map_or(0, |k| k.len())
        + 2
        + headers
            .iter()
            .map(|(n, v)| 2 + n.len() + 4 + v.len())
            .sum::<usize>()
        + 4
        + value.len()
}

/// Appends one encoded record to `buf`.
pub(crate) fn encode(
    buf: &mut Vec<u8>,
    offset: u64,
    timestamp_ms: i64,
    key: Option<&[u8]>,
    headers: &[(String, Bytes)],
    value: &[u8],
) {
    let start = buf.len();
    buf.reserve(encoded_len(key, headers, value));
    buf.put_u32_le(0); // len, patched below
    buf.put_u32_le(0); // crc, patched below
    buf.put_u64_le(offset);
    buf.put_i64_le(timestamp_ms);
    match key {
        Some(k) => {
            buf.put_i32_le(k.len() as i32);
            buf.put_slice(k);
        }
        None => buf.put_i32_le(-1),
    }
    buf.put_u16_le(headers.len() as u16);
    for (name, v) in headers {
        buf.put_u16_le(name.len() as u16);
        buf.put_slice(name.as_bytes());
        buf.put_u32_le(v.len() as u32);
        buf.put_slice(v);
    }
    buf.put_u32_le(value.len() as u32);
    buf.put_slice(value);
    let body = &buf[start + RECORD_HEADER_LEN..];
    let len = body.len() as u32;
    let crc = crc32c::crc32c(body);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the record at the start of `buf`; returns it and its encoded length.
pub(crate) fn decode(buf: &Bytes) -> Result<(Decoded, usize), Invalid> {
    if buf.len() < RECORD_HEADER_LEN {
        return Err(Invalid::Incomplete {
            needed: RECORD_HEADER_LEN,
        });
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if len == 0 && crc == 0 {
        // Zeroes: preallocated or never-written space after a torn write.
        return Err(Invalid::Corrupt("zeroed record header"));
    }
    if !(8 + 8 + 4 + 2 + 4..=MAX_BODY_LEN).contains(&len) {
        return Err(Invalid::Corrupt("record length out of bounds"));
    }
    let total = RECORD_HEADER_LEN + len;
    if buf.len() < total {
        return Err(Invalid::Incomplete { needed: total });
    }
    let body = buf.slice(RECORD_HEADER_LEN..total);
    if crc32c::crc32c(&body) != crc {
        return Err(Invalid::Corrupt("CRC32C mismatch"));
    }
    let mut r = Reader { buf: &body, pos: 0 };
    let offset = r.u64()?;
    let timestamp_ms = r.u64()? as i64;
    let key_len = r.u32()? as i32;
    let key = match key_len {
        -1 => None,
        n if n >= 0 => Some(r.bytes(n as usize)?),
        _ => return Err(Invalid::Corrupt("negative key length")),
    };
    let header_count = r.u16()?;
    let mut headers = Vec::with_capacity(header_count as usize);
    for _ in 0..header_count {
        let n = r.u16()? as usize;
        let name = r.bytes(n)?;
        let name = std::str::from_utf8(&name)
            .map_err(|_| Invalid::Corrupt("header name is not UTF-8"))?
            .to_owned();
        let vlen = r.u32()? as usize;
        headers.push((name, r.bytes(vlen)?));
    }
    let vlen = r.u32()? as usize;
    let value = r.bytes(vlen)?;
    if r.pos != body.len() {
        return Err(Invalid::Corrupt("trailing bytes in record body"));
    }
    Ok((
        Decoded {
            offset,
            timestamp_ms,
            key,
            headers,
            value,
        },
        total,
    ))
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<std::ops::Range<usize>, Invalid> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(Invalid::Corrupt("field runs past the record body"))?;
        let r = self.pos..end;
        self.pos = end;
        Ok(r)
    }
    fn u64(&mut self) -> Result<u64, Invalid> {
        let r = self.take(8)?;
        Ok(u64::from_le_bytes(self.buf[r].try_into().expect("8 bytes")))
    }
    fn u32(&mut self) -> Result<u32, Invalid> {
        let r = self.take(4)?;
        Ok(u32::from_le_bytes(self.buf[r].try_into().expect("4 bytes")))
    }
    fn u16(&mut self) -> Result<u16, Invalid> {
        let r = self.take(2)?;
        Ok(u16::from_le_bytes(self.buf[r].try_into().expect("2 bytes")))
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, Invalid> {
        let r = self.take(n)?;
        Ok(self.buf.slice(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(offset: u64, key: Option<&[u8]>, headers: &[(String, Bytes)], value: &[u8]) -> Bytes {
        let mut buf = Vec::new();
        encode(&mut buf, offset, 42, key, headers, value);
        assert_eq!(buf.len(), encoded_len(key, headers, value));
        Bytes::from(buf)
    }

    #[test]
    fn round_trip() {
        let headers = vec![("trace".to_string(), Bytes::from_static(b"abc"))];
        let b = one(7, Some(b"key"), &headers, b"value");
        let (d, n) = decode(&b).unwrap();
        assert_eq!(n, b.len());
        assert_eq!(d.offset, 7);
        assert_eq!(d.timestamp_ms, 42);
        assert_eq!(d.key.as_deref(), Some(&b"key"[..]));
        assert_eq!(d.headers, headers);
        assert_eq!(&d.value[..], b"value");
        let b = one(8, None, &[], b"");
        assert_eq!(decode(&b).unwrap().0.key, None);
    }

    #[test]
    fn torn_and_flipped_records_are_rejected() {
        let b = one(1, Some(b"k"), &[], b"hello world");
        for cut in 0..b.len() {
            assert!(
                matches!(decode(&b.slice(..cut)), Err(Invalid::Incomplete { .. })),
                "cut {cut}"
            );
        }
        for i in 0..b.len() {
            let mut v = b.to_vec();
            v[i] ^= 0x40;
            assert!(decode(&Bytes::from(v)).is_err(), "flip at {i} accepted");
        }
        assert!(matches!(
            decode(&Bytes::from(vec![0u8; 64])),
            Err(Invalid::Corrupt(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&Bytes::from(bytes));
        }

        #[test]
        fn encoded_records_round_trip(
            offset in any::<u64>(),
            ts in any::<i64>(),
            key in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
            headers in prop::collection::vec(("[a-z]{0,10}", prop::collection::vec(any::<u8>(), 0..16)), 0..4),
            value in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            let headers: Vec<(String, Bytes)> = headers.into_iter().map(|(n, v)| (n, Bytes::from(v))).collect();
            let mut buf = Vec::new();
            encode(&mut buf, offset, ts, key.as_deref(), &headers, &value);
            let (d, n) = decode(&Bytes::from(buf.clone())).unwrap();
            prop_assert_eq!(n, buf.len());
            prop_assert_eq!(d.offset, offset);
            prop_assert_eq!(d.timestamp_ms, ts);
            prop_assert_eq!(d.key.as_deref(), key.as_deref());
            prop_assert_eq!(d.headers, headers);
            prop_assert_eq!(&d.value[..], &value[..]);
        }
    }
}
