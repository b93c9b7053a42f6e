//! Log sequence numbers as a real type.
//!
//! PostgreSQL prints an LSN as two hexadecimal halves (`16/B374D848`). Keeping it as a
//! plain `u64` everywhere invites mixing byte counts, segment numbers and positions; a
//! newtype with `FromStr`/`Display` makes every conversion explicit and round-trips the
//! exact text users copy from `pg_current_wal_lsn()`.

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log (a byte offset in the WAL stream).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// The text was not an LSN of the form `X/Y` with hexadecimal halves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid LSN (expected two hexadecimal numbers like 16/B374D848): {0:?}")]
pub struct LsnParseError(pub String);

impl Lsn {
    /// The invalid LSN 0/0.
    pub const INVALID: Lsn = Lsn(0);

    /// The segment number containing this LSN, for a given segment size in bytes.
    pub fn segment_number(self, wal_segment_size: u64) -> u64 {
        self.0 / wal_segment_size
    }

    /// The byte offset of this LSN inside its segment.
    pub fn segment_offset(self, wal_segment_size: u64) -> u64 {
        self.0 % wal_segment_size
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let valid =
            |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid(hi) || !valid(lo) {
            return Err(err());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for text in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/1000000"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap().0, 0x16_B374_D848);
        assert_eq!("0/a".parse::<Lsn>().unwrap(), Lsn(10));
    }

    #[test]
    fn rejects_garbage() {
        for text in [
            "",
            "/",
            "1/",
            "/1",
            "16B374D848",
            "x/1",
            "1/2/3",
            "123456789/0",
            "-1/0",
            " 1/0",
        ] {
            assert!(text.parse::<Lsn>().is_err(), "{text:?} should not parse");
        }
    }

    #[test]
    fn segment_arithmetic() {
        let lsn: Lsn = "1/2345678".parse().unwrap();
        let seg = 16 * 1024 * 1024;
        assert_eq!(lsn.segment_number(seg), 0x1_0234_5678 / seg);
        assert_eq!(lsn.segment_offset(seg), 0x345678);
    }
}
