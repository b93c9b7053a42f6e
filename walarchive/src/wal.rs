//! WAL file names, timelines and the WAL page header.
//!
//! PostgreSQL hands `archive_command` and `restore_command` bare file names. Everything
//! walarchive decides (where an object lives, whether a file is a segment that must carry a
//! page header, which cluster wrote it) starts from those names, so they are parsed once into
//! real types and every malformed name is refused before it can reach the repository.
//!
//! The long page header at the start of every segment carries the cluster's system
//! identifier, the segment size and the page address: enough to refuse another cluster's WAL
//! (split brain, misconfiguration) and truncated or garbage files before they are stored.

use std::fmt;
use std::str::FromStr;

use crate::lsn::Lsn;

/// A PostgreSQL timeline ID (never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TimelineId {
    /// The timeline as the 8 hexadecimal digits used in file names.
    pub fn hex(self) -> String {
        format!("{:08X}", self.0)
    }
}

/// Smallest WAL segment size PostgreSQL allows (1 MiB).
pub const MIN_WAL_SEGMENT_SIZE: u64 = 1 << 20;
/// Largest WAL segment size PostgreSQL allows (1 GiB).
pub const MAX_WAL_SEGMENT_SIZE: u64 = 1 << 30;

/// Whether `size` is a WAL segment size PostgreSQL accepts: a power of two from 1 MiB to 1 GiB.
pub fn is_valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (MIN_WAL_SEGMENT_SIZE..=MAX_WAL_SEGMENT_SIZE).contains(&size)
}

/// The name of one WAL segment: timeline, "log" and "seg" parts, as in `000000010000000A000000FF`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    /// Timeline the segment belongs to.
    pub timeline: TimelineId,
    /// High part of the segment number (the "xlogid").
    pub log: u32,
    /// Low part: segment number within the 4 GiB "log".
    pub seg: u32,
}

impl SegmentName {
    /// Segments in one 4 GiB "log" for a segment size.
    pub fn segments_per_log(wal_segment_size: u64) -> u64 {
        0x1_0000_0000 / wal_segment_size
    }

    /// The segment's absolute number for a segment size.
    pub fn segment_number(self, wal_segment_size: u64) -> u64 {
        u64::from(self.log) * Self::segments_per_log(wal_segment_size) + u64::from(self.seg)
    }

    /// The name of segment `segno` on `timeline`.
    pub fn from_segment_number(timeline: TimelineId, segno: u64, wal_segment_size: u64) -> Self {
        let per = Self::segments_per_log(wal_segment_size);
        SegmentName {
            timeline,
            log: (segno / per) as u32,
            seg: (segno % per) as u32,
        }
    }

    /// The segment that contains `lsn`.
    pub fn containing(timeline: TimelineId, lsn: Lsn, wal_segment_size: u64) -> Self {
        Self::from_segment_number(
            timeline,
            lsn.segment_number(wal_segment_size),
            wal_segment_size,
        )
    }

    /// The LSN at which the segment starts.
    pub fn start_lsn(self, wal_segment_size: u64) -> Lsn {
        Lsn(self.segment_number(wal_segment_size) * wal_segment_size)
    }

    /// Whether the "seg" part is in range for this segment size (e.g. below 0x100 for 16 MiB).
    pub fn fits_segment_size(self, wal_segment_size: u64) -> bool {
        u64::from(self.seg) < Self::segments_per_log(wal_segment_size)
    }

    /// The following segment on the same timeline.
    pub fn next(self, wal_segment_size: u64) -> Self {
        Self::from_segment_number(
            self.timeline,
            self.segment_number(wal_segment_size) + 1,
            wal_segment_size,
        )
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.timeline.0, self.log, self.seg)
    }
}

/// Any file PostgreSQL archives or asks to restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFileName {
    /// A complete WAL segment, e.g. `000000010000000000000003`.
    Segment(SegmentName),
    /// The last, incomplete segment of an old timeline, e.g. `000000010000000000000003.partial`.
    Partial(SegmentName),
    /// A timeline history file, e.g. `00000002.history`.
    History(TimelineId),
    /// A backup history file, e.g. `000000010000000000000002.00000028.backup`.
    BackupHistory {
        /// Segment the backup started in.
        segment: SegmentName,
        /// Byte offset of the backup's start inside that segment.
        offset: u32,
    },
}

/// The text is not a name PostgreSQL gives WAL files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a WAL file name: {0:?} (expected a 24-hex-digit segment, NNNNNNNN.history, SEGMENT.partial or SEGMENT.OFFSET.backup)")]
pub struct WalNameError(pub String);

fn is_upper_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

fn parse_hex8(s: &str) -> Option<u32> {
    (s.len() == 8 && is_upper_hex(s))
        .then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
}

fn parse_timeline(s: &str) -> Option<TimelineId> {
    parse_hex8(s).filter(|&t| t != 0).map(TimelineId)
}

impl FromStr for SegmentName {
    type Err = WalNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || WalNameError(s.to_string());
        if s.len() != 24 || !s.is_ascii() {
            return Err(err());
        }
        Ok(SegmentName {
            timeline: parse_timeline(&s[0..8]).ok_or_else(err)?,
            log: parse_hex8(&s[8..16]).ok_or_else(err)?,
            seg: parse_hex8(&s[16..24]).ok_or_else(err)?,
        })
    }
}

impl FromStr for WalFileName {
    type Err = WalNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || WalNameError(s.to_string());
        if !s.is_ascii() {
            return Err(err());
        }
        if let Some(tli) = s.strip_suffix(".history") {
            return parse_timeline(tli)
                .map(WalFileName::History)
                .ok_or_else(err);
        }
        if let Some(seg) = s.strip_suffix(".partial") {
            return seg.parse().map(WalFileName::Partial).map_err(|_| err());
        }
        if let Some(rest) = s.strip_suffix(".backup") {
            let (seg, offset) = rest.split_once('.').ok_or_else(err)?;
            return Ok(WalFileName::BackupHistory {
                segment: seg.parse().map_err(|_| err())?,
                offset: parse_hex8(offset).ok_or_else(err)?,
            });
        }
        s.parse().map(WalFileName::Segment).map_err(|_| err())
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFileName::Segment(s) => write!(f, "{s}"),
            WalFileName::Partial(s) => write!(f, "{s}.partial"),
            WalFileName::History(t) => write!(f, "{:08X}.history", t.0),
            WalFileName::BackupHistory { segment, offset } => {
                write!(f, "{segment}.{offset:08X}.backup")
            }
        }
    }
}

impl WalFileName {
    /// The timeline the file belongs to.
    pub fn timeline(&self) -> TimelineId {
        match self {
            WalFileName::Segment(s) | WalFileName::Partial(s) => s.timeline,
            WalFileName::BackupHistory { segment, .. } => segment.timeline,
            WalFileName::History(t) => *t,
        }
    }

    /// The segment the file names or refers to (none for history files).
    pub fn segment(&self) -> Option<SegmentName> {
        match self {
            WalFileName::Segment(s) | WalFileName::Partial(s) => Some(*s),
            WalFileName::BackupHistory { segment, .. } => Some(*segment),
            WalFileName::History(_) => None,
        }
    }

    /// Whether the file holds WAL pages (and so starts with a long page header).
    pub fn holds_wal_pages(&self) -> bool {
        matches!(self, WalFileName::Segment(_) | WalFileName::Partial(_))
    }
}

/// `XLP_LONG_HEADER`: the page carries the long header (first page of a segment).
const XLP_LONG_HEADER: u16 = 0x0002;
/// Size of `XLogLongPageHeaderData` on 64-bit little-endian platforms.
pub const LONG_PAGE_HEADER_SIZE: usize = 40;

/// The long page header that starts every WAL segment (`XLogLongPageHeaderData`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalPageHeader {
    /// `XLOG_PAGE_MAGIC`: changes with every PostgreSQL major version's WAL format.
    pub magic: u16,
    /// Flag bits.
    pub info: u16,
    /// Timeline of the page.
    pub timeline: TimelineId,
    /// LSN of the page's start.
    pub page_address: Lsn,
    /// The cluster's system identifier (from pg_control).
    pub system_identifier: u64,
    /// WAL segment size in bytes.
    pub segment_size: u32,
    /// WAL block size in bytes.
    pub block_size: u32,
}

/// Why a buffer is not the start of a valid WAL segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageHeaderError {
    /// Fewer bytes than a long page header.
    #[error("too short to hold a WAL page header ({0} bytes)")]
    TooShort(usize),
    /// The magic number is not one PostgreSQL uses.
    #[error("no WAL page magic (found 0x{0:04X}): not a PostgreSQL WAL segment")]
    BadMagic(u16),
    /// The first page lacks the long-header flag.
    #[error("the first page has no long header (flags 0x{0:04X})")]
    NotLongHeader(u16),
    /// Segment or block size fields are out of range.
    #[error("implausible sizes in the page header (segment {segment_size}, block {block_size})")]
    BadSizes {
        /// Segment size field.
        segment_size: u32,
        /// Block size field.
        block_size: u32,
    },
}

impl WalPageHeader {
    /// Parses the long page header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, PageHeaderError> {
        if buf.len() < LONG_PAGE_HEADER_SIZE {
            return Err(PageHeaderError::TooShort(buf.len()));
        }
        let u16_at = |o: usize| u16::from_le_bytes([buf[o], buf[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(buf[o..o + 8].try_into().expect("8 bytes"));
        let h = WalPageHeader {
            magic: u16_at(0),
            info: u16_at(2),
            timeline: TimelineId(u32_at(4)),
            page_address: Lsn(u64_at(8)),
            system_identifier: u64_at(24),
            segment_size: u32_at(32),
            block_size: u32_at(36),
        };
        // Every WAL format since PostgreSQL 9.x uses magics 0xD0xx/0xD1xx.
        if h.magic >> 9 != 0xD000 >> 9 {
            return Err(PageHeaderError::BadMagic(h.magic));
        }
        if h.info & XLP_LONG_HEADER == 0 {
            return Err(PageHeaderError::NotLongHeader(h.info));
        }
        let block_ok = h.block_size.is_power_of_two() && (1024..=65536).contains(&h.block_size);
        if !is_valid_segment_size(u64::from(h.segment_size)) || !block_ok {
            return Err(PageHeaderError::BadSizes {
                segment_size: h.segment_size,
                block_size: h.block_size,
            });
        }
        Ok(h)
    }

    /// The PostgreSQL major version that writes this page magic, when known.
    pub fn pg_major_version(&self) -> Option<u32> {
        pg_major_for_magic(self.magic)
    }
}

/// The PostgreSQL major version whose WAL format has this page magic, when known.
pub fn pg_major_for_magic(magic: u16) -> Option<u32> {
    Some(match magic {
        0xD097 => 10,
        0xD098 => 11,
        0xD101 => 12,
        0xD106 => 13,
        0xD10D => 14,
        0xD110 => 15,
        0xD113 => 16,
        0xD116 => 17,
        // PostgreSQL 18's access/xlog_internal.h (read from the 18.6 install's headers).
        0xD118 => 18,
        _ => return None,
    })
}

/// The WAL page magic of a PostgreSQL major version, when known.
pub fn magic_for_major(major: u32) -> Option<u16> {
    (0xD000..=0xD1FF).find(|&m| pg_major_for_magic(m) == Some(major))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        for name in [
            "000000010000000000000001",
            "0000000A000000FF000000FF",
            "FFFFFFFFFFFFFFFFFFFFFFFF",
        ] {
            let parsed: WalFileName = name.parse().unwrap();
            assert!(matches!(parsed, WalFileName::Segment(_)));
            assert_eq!(parsed.to_string(), name);
        }
    }

    #[test]
    fn other_kinds_round_trip() {
        let cases = [
            ("00000002.history", WalFileName::History(TimelineId(2))),
            (
                "000000010000000000000003.partial",
                WalFileName::Partial(SegmentName {
                    timeline: TimelineId(1),
                    log: 0,
                    seg: 3,
                }),
            ),
            (
                "000000010000000000000002.00000028.backup",
                WalFileName::BackupHistory {
                    segment: SegmentName {
                        timeline: TimelineId(1),
                        log: 0,
                        seg: 2,
                    },
                    offset: 0x28,
                },
            ),
        ];
        for (text, expected) in cases {
            let parsed: WalFileName = text.parse().unwrap();
            assert_eq!(parsed, expected);
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn bad_names_are_refused() {
        for name in [
            "",
            "RECOVERYXLOG",
            "00000001000000000000000",
            "0000000100000000000000011",
            "000000010000000000000001.gz",
            "00000000000000000000000A",
            "000000010000000000000a01",
            "00000000.history",
            "0000001.history",
            "000000010000000000000002.0000028.backup",
            "000000010000000000000002.backup",
            "../../etc/passwd",
            "00000001/0000000000000001",
            "ＡＡ",
        ] {
            assert!(
                name.parse::<WalFileName>().is_err(),
                "{name:?} should be refused"
            );
        }
    }

    #[test]
    fn segment_numbers_depend_on_segment_size() {
        let s: SegmentName = "000000010000000100000002".parse().unwrap();
        assert_eq!(s.segment_number(16 << 20), 256 + 2);
        assert_eq!(s.segment_number(1 << 20), 4096 + 2);
        assert_eq!(s.start_lsn(16 << 20), "1/2000000".parse().unwrap());
        assert_eq!(
            SegmentName::from_segment_number(TimelineId(1), 258, 16 << 20),
            s
        );
        assert_eq!(s.next(16 << 20).to_string(), "000000010000000100000003");
        let last: SegmentName = "0000000100000001000000FF".parse().unwrap();
        assert_eq!(last.next(16 << 20).to_string(), "000000010000000200000000");
        assert!(last.fits_segment_size(16 << 20));
        assert!(!last.fits_segment_size(1 << 30));
        assert_eq!(
            SegmentName::containing(TimelineId(3), "0/3FFFFFF".parse().unwrap(), 16 << 20)
                .to_string(),
            "000000030000000000000003"
        );
    }

    #[test]
    fn segment_sizes() {
        assert!(is_valid_segment_size(1 << 20));
        assert!(is_valid_segment_size(16 << 20));
        assert!(is_valid_segment_size(1 << 30));
        assert!(!is_valid_segment_size(1 << 19));
        assert!(!is_valid_segment_size(2 << 30));
        assert!(!is_valid_segment_size(3 << 20));
        assert!(!is_valid_segment_size(0));
    }

    fn header_bytes(magic: u16, info: u16, seg: u32, block: u32) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[0..2].copy_from_slice(&magic.to_le_bytes());
        b[2..4].copy_from_slice(&info.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&0x0300_0000u64.to_le_bytes());
        b[24..32].copy_from_slice(&7_312_345_678_901_234_567u64.to_le_bytes());
        b[32..36].copy_from_slice(&seg.to_le_bytes());
        b[36..40].copy_from_slice(&block.to_le_bytes());
        b
    }

    #[test]
    fn parses_long_page_header() {
        let h = WalPageHeader::parse(&header_bytes(0xD110, 0x0006, 16 << 20, 8192)).unwrap();
        assert_eq!(h.pg_major_version(), Some(15));
        assert_eq!(h.timeline, TimelineId(1));
        assert_eq!(h.page_address, Lsn(0x0300_0000));
        assert_eq!(h.system_identifier, 7_312_345_678_901_234_567);
        assert_eq!(h.segment_size, 16 << 20);
        assert_eq!(h.block_size, 8192);
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(
            WalPageHeader::parse(&[0; 10]),
            Err(PageHeaderError::TooShort(10))
        );
        assert!(matches!(
            WalPageHeader::parse(&[0; 64]),
            Err(PageHeaderError::BadMagic(0))
        ));
        assert!(matches!(
            WalPageHeader::parse(&header_bytes(0xD110, 0x0001, 16 << 20, 8192)),
            Err(PageHeaderError::NotLongHeader(_))
        ));
        assert!(matches!(
            WalPageHeader::parse(&header_bytes(0xD110, 0x0002, 3 << 20, 8192)),
            Err(PageHeaderError::BadSizes { .. })
        ));
    }
}
