//! Lowercase hexadecimal, the one spelling of tokens, ids and hashes in URLs, the page and
//! the logs.

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly `2 × N` hex digits (either case) as bytes; anything else is None. Stricter than
/// `from_str_radix` alone, which would take `+a`: one value has one spelling.
pub fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_spellings() {
        let bytes = [0x00, 0x0a, 0xff, 0x5e];
        assert_eq!(encode(&bytes), "000aff5e");
        assert_eq!(decode::<4>("000aff5e"), Some(bytes));
        assert_eq!(decode::<4>("000AFF5E"), Some(bytes));
        assert_eq!(decode::<4>("000aff5"), None);
        assert_eq!(decode::<4>("000aff5e0"), None);
        assert_eq!(decode::<2>("+a0b"), None);
        assert_eq!(decode::<2>("é0b"), None);
    }
}
