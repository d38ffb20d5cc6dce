//! Base-16 ("hex") encoding of hash bytes, as the daemon prints them.
//!
//! Encoding is always lowercase; decoding accepts both cases, as the C++
//! daemon's `isxdigit` does.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes hex of any case; `None` on an odd length or a non-hex character.
pub fn decode(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    s.chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors() {
        assert_eq!(encode(&[0x01, 0xab, 0xff]), "01abff");
        assert_eq!(decode(b"01ABff"), Some(vec![0x01, 0xab, 0xff]));
        assert_eq!(decode(b"0"), None);
        assert_eq!(decode(b"0g"), None);
    }

    #[test]
    fn round_trip() {
        fn prop(bytes: Vec<u8>) -> bool {
            decode(encode(&bytes).as_bytes()) == Some(bytes)
        }
        guixd_testkit::check(prop as fn(Vec<u8>) -> bool);
    }
}
