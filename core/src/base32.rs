//! Nix's base-32 encoding ("nix-base32") of hash bytes.
//!
//! The alphabet omits `e o t u`, and the string is written with the least
//! significant 5-bit group *last*: character `len-1-k` carries bits `5k..5k+5`
//! of the little-endian bit string. A 20-byte hash is 32 characters, a
//! 32-byte hash 52. Decoding accepts exactly what the C++ daemon accepts:
//! characters outside the alphabet are rejected, and bits beyond the hash
//! size (the top 4 bits of a 52-character SHA-256) are ignored.

/// The 32 characters of nix-base32, in digit order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Number of characters needed to encode `byte_count` bytes.
pub const fn encoded_len(byte_count: usize) -> usize {
    if byte_count == 0 {
        0
    } else {
        (byte_count * 8 - 1) / 5 + 1
    }
}

/// Encodes `bytes` in nix-base32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for k in (0..len).rev() {
        let b = k * 5;
        let i = b / 8;
        let j = b % 8;
        let low = u32::from(bytes[i]) >> j;
        let high = bytes
            .get(i + 1)
            .map_or(0, |&next| u32::from(next) << (8 - j));
        out.push(char::from(ALPHABET[((low | high) & 31) as usize]));
    }
    out
}

/// The value of one nix-base32 character, if it is one.
pub fn digit(c: u8) -> Option<u8> {
    // A 128-entry table would be faster; this runs only on short strings.
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

/// True when every byte of `s` is a nix-base32 character.
pub fn is_base32(s: &[u8]) -> bool {
    s.iter().all(|&c| digit(c).is_some())
}

/// Decodes `s`, which must be exactly `encoded_len(byte_count)` characters,
/// into `byte_count` bytes. Returns `None` on a wrong length or character.
pub fn decode(s: &[u8], byte_count: usize) -> Option<Vec<u8>> {
    if s.len() != encoded_len(byte_count) {
        return None;
    }
    let mut out = vec![0u8; byte_count];
    for (n, &c) in s.iter().rev().enumerate() {
        let d = digit(c)?;
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        out[i] |= d << j;
        if i + 1 < byte_count {
            out[i + 1] |= ((u16::from(d)) >> (8 - j)) as u8;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        let twenty: Vec<u8> = (0..20).collect();
        assert_eq!(encode(&twenty), "2c91240g1q6hq2qa1440f1h50h1h4080");
        assert_eq!(
            decode(b"2c91240g1q6hq2qa1440f1h50h1h4080", 20),
            Some(twenty)
        );
        assert_eq!(encode(&[]), "");
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(16), 26);
        assert_eq!(encoded_len(64), 103);
    }

    #[test]
    fn rejects_foreign_characters_and_lengths() {
        assert_eq!(decode(b"e", 1), None);
        assert_eq!(decode(b"00", 2), None);
        assert_eq!(decode(b"0u", 1), None);
    }

    #[test]
    fn round_trip() {
        fn prop(bytes: Vec<u8>) -> bool {
            decode(encode(&bytes).as_bytes(), bytes.len()) == Some(bytes)
        }
        guixd_testkit::check(prop as fn(Vec<u8>) -> bool);
    }
}
