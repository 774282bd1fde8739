//! The secret in a phone's URLs: `{base}e/<token>/` (one-time enrollment) and
//! `{base}p/<token>/` (steady). A [`Token`] is parsed at the edge, compared in constant time,
//! formats its URLs in one place, and never shows itself by accident: `Debug` and
//! human-readable serialisation (JSON: the CLI, the API, `store dump`) print a mask. Only the
//! store's binary encoding carries the bytes, and [`Token::reveal`] the hex, on purpose.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;

/// Stand-in for a secret wherever one is shown masked.
pub const MASK: &str = "********";

/// 128 random bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token([u8; 16]);

/// Which of a device's two URLs a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `/e/<token>/`, the one-time enrollment URL.
    Enrollment,
    /// `/p/<token>/`, the steady URL.
    Steady,
}

impl TokenKind {
    /// The URL's first path segment.
    fn segment(self) -> &'static str {
        match self {
            TokenKind::Enrollment => "e",
            TokenKind::Steady => "p",
        }
    }

    /// The URL's shape with the token masked, for showing to a person.
    pub fn masked_url(self, base: &str) -> String {
        format!("{base}{}/{MASK}/", self.segment())
    }
}

impl Token {
    /// A fresh token from the system's random source.
    pub fn generate() -> Token {
        Token(crate::random::bytes())
    }

    /// The token with these bytes (fixtures and tests; the appliance makes its own with
    /// [`Token::generate`]).
    pub const fn from_bytes(bytes: [u8; 16]) -> Token {
        Token(bytes)
    }

    /// Exactly 32 hex digits, as in a URL; anything else is None.
    pub fn parse(text: &str) -> Option<Token> {
        crate::hex::decode(text).map(Token)
    }

    /// Whether `other` is this token, in time independent of where they differ.
    pub fn matches(&self, other: &Token) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// The URL this token opens when it is a `kind` token: `{base}e/<hex>/` or `{base}p/<hex>/`.
    pub fn url(&self, kind: TokenKind, base: &str) -> String {
        format!("{base}{}/{}/", kind.segment(), self.reveal())
    }

    /// The token's hex, for the few places that must show or send it.
    pub fn reveal(&self) -> String {
        crate::hex::encode(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({MASK})")
    }
}

impl Serialize for Token {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(MASK)
        } else {
            // The store's encoding: exactly what `[u8; 16]` was before the type existed.
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Token, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            Token::parse(&text).ok_or_else(|| serde::de::Error::custom("a token is 32 hex digits"))
        } else {
            <[u8; 16]>::deserialize(deserializer).map(Token)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_shows_itself_only_on_purpose() {
        let token = Token::parse("00112233445566778899aabbccddeeff").expect("32 hex digits");
        assert_eq!(format!("{token:?}"), "Token(********)");
        assert_eq!(serde_json::to_string(&token).unwrap(), "\"********\"");
        assert_eq!(token.url(TokenKind::Enrollment, "https://x/"), "https://x/e/00112233445566778899aabbccddeeff/");
        assert_eq!(TokenKind::Steady.masked_url("https://x/"), "https://x/p/********/");
        // The store's bytes are the bare 16 bytes, as before.
        let stored = postcard::to_allocvec(&token).unwrap();
        assert_eq!(
            stored,
            postcard::to_allocvec(&[
                0x00u8, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff
            ])
            .unwrap()
        );
        assert!(postcard::from_bytes::<Token>(&stored).unwrap().matches(&token));
    }

    #[test]
    fn parsing_takes_one_spelling_only() {
        assert!(Token::parse("00112233445566778899aabbccddeeff").is_some());
        assert!(Token::parse("00112233445566778899aabbccddeef").is_none());
        assert!(Token::parse("+0112233445566778899aabbccddeeff").is_none());
        assert!(Token::parse("").is_none());
        let one = Token::generate();
        assert!(one.matches(&one) && !one.matches(&Token::generate()));
    }
}
