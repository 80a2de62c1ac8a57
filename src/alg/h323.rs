//! H.323 (H.225.0 call signalling and RAS). These are ASN.1 PER encoded, and
//! addresses travel as four raw bytes (TransportAddress ipAddress), so any
//! occurrence of the address's bytes is reported. Decoding PER to find the
//! exact fields would be far more code for little gain: the point is to flag
//! that the guest's address leaks, and a chance four-byte match is rare.

use super::{AlgProtocol, Field, Finding};

/// The earliest occurrence of the raw bytes of `private` or `public`.
pub fn inspect(payload: &[u8], private: [u8; 4], public: [u8; 4]) -> Option<Finding> {
    let window = payload
        .windows(4)
        .find(|w| *w == private.as_slice() || *w == public.as_slice())?;
    Some(Finding {
        protocol: AlgProtocol::H323,
        field: Field::H323Binary,
        address: <[u8; 4]>::try_from(window).ok()?,
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    const PRIV: [u8; 4] = [10, 0, 1, 2];
    const PUB: [u8; 4] = [203, 0, 113, 7];

    /// TPKT + Q.931 SETUP-shaped prefix, then a user-user IE whose H.225
    /// body carries `addr` followed by port 1720.
    fn setup(addr: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0x03, 0x00, 0x00, 0x00]; // TPKT, length patched below
        p.extend_from_slice(&[0x08, 0x02, 0x00, 0x01, 0x05]); // Q.931 SETUP
        p.extend_from_slice(&[0x7e, 0x00, 0x10, 0x05, 0x20, 0xb8, 0x06, 0x00]);
        p.extend_from_slice(&addr);
        p.extend_from_slice(&[0x06, 0xb8, 0x00, 0x11, 0x22]);
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p
    }

    #[test]
    fn raw_address_bytes() {
        let f = inspect(&setup(PRIV), PRIV, PUB).unwrap();
        assert_eq!(
            f,
            Finding {
                protocol: AlgProtocol::H323,
                field: Field::H323Binary,
                address: PRIV
            }
        );
        assert_eq!(
            inspect(&setup(PUB), PRIV, PUB).map(|f| f.address),
            Some(PUB)
        );
        assert_eq!(inspect(&setup([10, 0, 1, 21]), PRIV, PUB), None);
        assert_eq!(inspect(&PRIV[..3], PRIV, PUB), None);
        assert_eq!(inspect(&[], PRIV, PUB), None);
        // Earliest occurrence wins.
        let mut both = setup(PUB);
        both.extend_from_slice(&PRIV);
        assert_eq!(inspect(&both, PRIV, PUB).map(|f| f.address), Some(PUB));
    }
}
