//! How an outbox row keeps a message's headers: a count, then length-prefixed names and values.

use bytes::Bytes;
use shopflow_bus::Headers;

use crate::{Error, Result};

pub(crate) fn encode(h: &Headers) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    for (n, v) in h {
        out.extend_from_slice(&(n.len() as u16).to_le_bytes());
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

pub(crate) fn decode(b: &[u8]) -> Result<Headers> {
    let corrupt = || Error::Corrupt {
        what: "outbox headers",
        reason: "truncated header encoding".into(),
    };
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let s = b.get(pos..pos + n).ok_or_else(corrupt)?;
        pos += n;
        Ok(s)
    };
    let count = u16::from_le_bytes(take(2)?.try_into().map_err(|_| corrupt())?);
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let nl = u16::from_le_bytes(take(2)?.try_into().map_err(|_| corrupt())?) as usize;
        let name = String::from_utf8(take(nl)?.to_vec()).map_err(|_| corrupt())?;
        let vl = u32::from_le_bytes(take(4)?.try_into().map_err(|_| corrupt())?) as usize;
        out.push((name, Bytes::copy_from_slice(take(vl)?)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_reject_truncation() {
        let h: Headers = vec![
            ("a".into(), Bytes::from_static(b"1")),
            ("bb".into(), Bytes::new()),
        ];
        let enc = encode(&h);
        assert_eq!(decode(&enc).unwrap(), h);
        for cut in 0..enc.len() {
            assert!(decode(&enc[..cut]).is_err());
        }
    }
}
