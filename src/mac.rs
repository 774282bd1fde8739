//! The `Mac` type: a phone's Ethernet address, parsed once at the edge.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 48-bit MAC address. Displays as 12 lowercase hex digits, the form vendors use in
/// provisioning file names. Serialises as those digits in human-readable formats (JSON) and
/// as six bytes in compact ones (postcard, in the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() { serializer.collect_str(self) } else { self.0.serialize(serializer) }
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = std::string::String::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 6]>::deserialize(deserializer).map(Mac)
        }
    }
}

/// Why a MAC address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?}: {reason}; write it as 12 hex digits, e.g. 00:15:65:aa:bb:cc or 001565AABBCC")]
pub struct MacError {
    input: String,
    reason: &'static str,
}

impl FromStr for Mac {
    type Err = MacError;

    /// Accepts `001565aabbcc`, `00:15:65:aa:bb:cc` and `00-15-65-AA-BB-CC`.
    fn from_str(input: &str) -> Result<Self, MacError> {
        let error = |reason| MacError { input: input.chars().take(40).collect(), reason };
        let digits: Vec<u8> = input.bytes().filter(|b| *b != b':' && *b != b'-').collect();
        let separators = input.len() - digits.len();
        if separators != 0 && separators != 5 {
            return Err(error("separators must be between every pair of digits or absent"));
        }
        if separators == 5 && input.bytes().enumerate().any(|(i, b)| (i % 3 == 2) != (b == b':' || b == b'-')) {
            return Err(error("separators must be between every pair of digits"));
        }
        if digits.len() != 12 {
            return Err(error("expected 12 hex digits"));
        }
        let nibble = |digit: u8| char::from(digit).to_digit(16).map(|value| value as u8);
        let mut mac = [0; 6];
        for (i, pair) in digits.chunks(2).enumerate() {
            let (Some(high), Some(low)) = (nibble(pair[0]), nibble(pair[1])) else { return Err(error("not hex")) };
            mac[i] = high << 4 | low;
        }
        Ok(Mac(mac))
    }
}

impl Mac {
    /// `00-15-65-AA-BB-CC`, the form Yealink's RPS documents.
    pub fn dashed_upper(&self) -> std::string::String {
        self.0.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join("-")
    }
}

/// What the API documents a MAC as: the forms [`Mac::from_str`] accepts, with the ASCII white
/// space around it that a device's fields may carry.
#[cfg(test)]
pub const INPUT_PATTERN: &str = r"^[ \t\n\f\r]*([0-9A-Fa-f]{12}|[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5})[ \t\n\f\r]*$";

/// A MAC in an answer: always 12 lowercase hex digits.
#[cfg(test)]
impl utoipa::PartialSchema for Mac {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[0-9a-f]{12}$"))
            .examples(["805ec0d57d72"])
            .into()
    }
}

#[cfg(test)]
impl utoipa::ToSchema for Mac {}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pattern the API documents for MACs takes exactly what the parser takes, once the
    /// ASCII white space around it (which callers trim) is off.
    #[test]
    fn the_documented_pattern_is_the_parser() {
        let pattern = regex_lite::Regex::new(INPUT_PATTERN).expect("the pattern compiles");
        let samples = [
            "001565aabbcc",
            "001565AABBCC",
            "00:15:65:aa:bb:cc",
            "00-15-65-AA-BB-CC",
            "00:15-65:aa-bb:cc",
            " 001565aabbcc\t",
            "\n00:15:65:aa:bb:cc\r\n",
            "",
            "0",
            "001565aabbc",
            "001565aabbccd",
            "00:1565aabbcc",
            "0:015:65:aa:bb:cc",
            "+01565aabbcc",
            "+1+1+1+1+1+1",
            "00:15:65:aa:bb:cc:",
            "001565aabbcg",
            "00.15.65.aa.bb.cc",
            "\u{a0}001565aabbcc",
            "00 15 65 aa bb cc",
            "00::15:65:aa:bb:c",
        ];
        for sample in samples {
            let trimmed = sample.trim_matches(|c: char| c.is_ascii_whitespace());
            assert_eq!(pattern.is_match(sample), trimmed.parse::<Mac>().is_ok(), "{sample:?}");
        }
    }

    #[test]
    fn parses_the_three_common_spellings() {
        let expected = Mac([0x00, 0x15, 0x65, 0xaa, 0xbb, 0xcc]);
        for text in ["001565aabbcc", "00:15:65:AA:BB:CC", "00-15-65-aa-bb-cc"] {
            assert_eq!(text.parse::<Mac>(), Ok(expected), "{text}");
        }
        assert_eq!(expected.to_string(), "001565aabbcc");
    }

    #[test]
    fn rejects_malformed_addresses_with_a_reason() {
        for text in [
            "",
            "001565aabb",
            "001565aabbccdd",
            "00:15:65:aa:bb:cg",
            "0:015:65:aa:bb:cc",
            "00:1565aabbcc",
            "é01565aabbcc",
        ] {
            let error = text.parse::<Mac>().unwrap_err();
            assert!(error.to_string().contains("12 hex digits"), "{text}: {error}");
        }
    }
}
