//! A minimal reader of PostgreSQL 15 to 18 WAL records: just enough to find commits,
//! aborts, restore points and checkpoints, and where the valid WAL ends.
//!
//! Point-in-time clones need facts only the WAL holds: the time of the last archived
//! transaction (what "latest" means), whether a commit after a target time exists (whether
//! PostgreSQL will ever reach it), where a named restore point lies. `pg_waldump` knows, but
//! it is a separate binary of one major version; this module reads the bytes itself, pure
//! over `&[u8]` (no I/O), and refuses what it does not understand rather than guessing: a
//! page magic of another version is [`WalRecordError::UnsupportedVersion`], a record whose
//! CRC holds but whose layout does not parse is [`WalRecordError::BadRecord`].
//!
//! The end of the valid WAL is not an error: it is how the end of the written WAL looks (a
//! recycled segment's stale pages, zeroes, a torn last record), as PostgreSQL's own reader
//! treats it. One case is told apart: a record that fails its checks (CRC, `xl_prev`,
//! length) while a *later* page of the input still carries a valid header for its own
//! address. The WAL demonstrably goes on past it, so this is damage, not the end:
//! [`WalRecordError::BadRecord`] (see [`Stop`]).
//!
//! Layouts: src/include/access/xlog_internal.h (pages), xlogrecord.h (records and block
//! references), pg_control.h (checkpoints, restore points), xact.h (commits and aborts).
//!
//! Versions: each major has its own page magic ([`WAL_FORMATS`]), and a stream of WAL is one
//! major's: its first page fixes the magic every later page must have. What this reader
//! decodes has the same layout in every major it knows (read from the 16 and 18 headers, and
//! checked against each major's `pg_waldump` by `tests/walrecord.rs`): the page and record
//! headers and block references (xlogrecord.h is unchanged from 15 to 18 but for comments);
//! `xact_time` first in a commit's or abort's main data; `xl_restore_point`; and `time` at
//! offset 64 of `CheckPoint`, because the `int wal_level` PostgreSQL 17 added sits in the
//! padding after `bool fullPageWrites` (offset 20), before the 8-aligned `nextXid`. The
//! `XLOG_CHECKPOINT_REDO` record 17 added (info 0xE0, main data a bare `wal_level`) marks
//! where an online checkpoint's redo starts; it carries no time and is not a checkpoint here
//! ([`RecordKind::Other`]). A major whose layout differs gets its own entry keyed by its
//! magic, never a guess: an unknown magic is [`WalRecordError::UnsupportedVersion`].

use chrono::{DateTime, Utc};

use crate::lsn::Lsn;
use crate::wal::{pg_major_for_magic, TimelineId, WalPageHeader, LONG_PAGE_HEADER_SIZE};

#[cfg(test)]
mod tests;

/// `XLOG_PAGE_MAGIC` of PostgreSQL 15.
pub const PG15_PAGE_MAGIC: u16 = 0xD110;
/// The WAL formats this reader reads: (PostgreSQL major, `XLOG_PAGE_MAGIC`), from each
/// major's access/xlog_internal.h (15 and 17 also from their real WAL).
pub const WAL_FORMATS: [(u32, u16); 4] = [(15, 0xD110), (16, 0xD113), (17, 0xD116), (18, 0xD118)];

/// Whether this reader reads WAL with page magic `magic`.
pub fn reads_magic(magic: u16) -> bool {
    WAL_FORMATS.iter().any(|&(_, m)| m == magic)
}
/// `SizeOfXLogShortPHD`: the header of every page but a segment's first.
pub const SHORT_PAGE_HEADER_SIZE: usize = 24;
/// `SizeOfXLogRecord`.
pub const RECORD_HEADER_SIZE: usize = 24;

const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
const XLP_ALL_FLAGS: u16 = 0x000F;

const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const XLR_INFO_MASK: u8 = 0x0F;
const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_RESTORE_POINT: u8 = 0x70;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;

const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// `BKPIMAGE_COMPRESS_PGLZ | _LZ4 | _ZSTD` (PostgreSQL 15).
const BKPIMAGE_COMPRESSED: u8 = 0x04 | 0x08 | 0x10;

/// `xl_restore_point`: `TimestampTz rp_time; char rp_name[MAXFNAMELEN = 64]`.
const RESTORE_POINT_SIZE: usize = 8 + 64;
/// Records are at most about 1 GB (PostgreSQL allocates them whole).
const MAX_RECORD_SIZE: u64 = 1 << 30;
/// Offset of `pg_time_t time` in `CheckPoint` (PostgreSQL 15, 64-bit).
const CHECKPOINT_TIME_OFFSET: usize = 64;
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Why the WAL could not be read. The end of the valid WAL is not one of these (see [`Stop`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalRecordError {
    /// The segment was written by a PostgreSQL version whose WAL format this reader does not know.
    #[error("WAL page magic 0x{0:04X} ({version}) is not one of PostgreSQL 15 to 18: this WAL cannot be read", version = describe_magic(*.0))]
    UnsupportedVersion(u16),
    /// A page that belongs where it is (its address is right) but whose header is not valid.
    #[error("invalid WAL page header at {lsn}")]
    BadPage {
        /// The page's LSN.
        lsn: Lsn,
    },
    /// A record that is damaged (the WAL continues past it) or whose content cannot be decoded.
    #[error("invalid WAL record at {lsn}: {why}")]
    BadRecord {
        /// Where the record starts.
        lsn: Lsn,
        /// What is wrong with it.
        why: String,
    },
}

fn describe_magic(magic: u16) -> String {
    match pg_major_for_magic(magic) {
        Some(v) => format!("PostgreSQL {v}"),
        None => "an unknown version".to_string(),
    }
}

/// One WAL record: where it starts and ends, and what it is when it matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where the record starts (as pg_waldump's `lsn:`).
    pub start: Lsn,
    /// Where it ends, as PostgreSQL's reader says (`EndRecPtr`): the byte after it, aligned
    /// to 8; for `XLOG_SWITCH`, the start of the next segment.
    pub end: Lsn,
    /// What the record is.
    pub kind: RecordKind,
}

/// The kinds of record this reader decodes; every other record is [`RecordKind::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKind {
    /// A commit (also `COMMIT PREPARED`), with its `xact_time`.
    Commit(DateTime<Utc>),
    /// An abort (also `ROLLBACK PREPARED`), with its `xact_time`.
    Abort(DateTime<Utc>),
    /// `pg_create_restore_point(name)`, with the time it was created.
    RestorePoint {
        /// The name (invalid UTF-8 replaced by U+FFFD).
        name: String,
        /// `rp_time`.
        time: DateTime<Utc>,
    },
    /// An online or shutdown checkpoint, with its time (whole seconds).
    Checkpoint(DateTime<Utc>),
    /// Anything else.
    Other,
}

/// Why reading stopped where it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The input ran out (possibly inside a record that continues in the next segment).
    EndOfInput,
    /// An `XLOG_SWITCH` record: the rest of its segment is unused.
    Switch,
    /// The valid WAL ends here: a page whose address is not its own (a recycled segment's
    /// stale tail), zeroes, or a record failing its checks with nothing valid after it.
    EndOfWal {
        /// Where the invalid page or record starts.
        lsn: Lsn,
        /// What was found there.
        why: String,
    },
}

/// What one segment holds, from [`summarize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    /// The end of the last complete record that ends in the segment (or of the continuation
    /// it starts with); the segment's start when none does. A record running into the next
    /// segment is not counted: its CRC cannot be checked without it.
    pub end_of_valid_wal: Lsn,
    /// The first record that starts (and ends) in the segment.
    pub first_record: Option<Lsn>,
    /// The last one.
    pub last_record: Option<Lsn>,
    /// The last commit or abort: its start and `xact_time`.
    pub last_xact: Option<(Lsn, DateTime<Utc>)>,
    /// Restore points, in WAL order: start, name, time.
    pub restore_points: Vec<(Lsn, String, DateTime<Utc>)>,
    /// Why reading stopped.
    pub stop: Stop,
}

/// Reads one segment on its own: skips the continuation of a record from the previous
/// segment (`xlp_rem_len`), reads every record that starts and ends in it, and stops at the
/// end of the valid WAL without error. Damage is an error (see the module documentation).
pub fn summarize(
    segment_start: Lsn,
    segment_size: u64,
    bytes: &[u8],
) -> Result<SegmentSummary, WalRecordError> {
    // The segment's timeline is not known here (the first segment of a new timeline starts
    // with pages of the old one): only the rule that timelines never go down applies.
    let mut reader = WalReader::new(segment_size, TimelineId(u32::MAX), segment_start);
    let records = reader.feed(segment_start, bytes)?;
    let mut summary = SegmentSummary {
        end_of_valid_wal: reader.end_of_valid_wal(),
        first_record: records.first().map(|r| r.start),
        last_record: records.last().map(|r| r.start),
        last_xact: None,
        restore_points: Vec::new(),
        stop: match reader.stop() {
            Some(stop) => stop.clone(),
            None if reader.after_switch => Stop::Switch,
            None => Stop::EndOfInput,
        },
    };
    for r in records {
        match r.kind {
            RecordKind::Commit(t) | RecordKind::Abort(t) => summary.last_xact = Some((r.start, t)),
            RecordKind::RestorePoint { name, time } => {
                summary.restore_points.push((r.start, name, time))
            }
            RecordKind::Checkpoint(_) | RecordKind::Other => {}
        }
    }
    Ok(summary)
}

/// Where the reader is between pages.
#[derive(Debug)]
enum State {
    /// At a page boundary where a record of unknown start may continue: skip it if so.
    MaySkip,
    /// Skipping `left` bytes of a record that started before the reader's start.
    Skipping { left: u64 },
    /// The next record starts at `pos`.
    AtRecord,
    /// Inside a record that started at `start`: `buf` holds its bytes so far.
    InRecord {
        start: Lsn,
        total: u64,
        buf: Vec<u8>,
    },
    /// Reading has stopped; `suspect` is a record failure that later valid pages make damage.
    Stopped {
        stop: Stop,
        suspect: Option<WalRecordError>,
    },
}

/// Reads consecutive WAL segments of one timeline, fed in order, carrying a record split
/// between them.
#[derive(Debug)]
pub struct WalReader {
    segment_size: u64,
    timeline: TimelineId,
    page_size: u64,
    /// Next byte to read: a record start in `AtRecord`, otherwise the continuation point.
    pos: Lsn,
    state: State,
    prev: Option<Lsn>,
    end_of_valid: Lsn,
    last_page_tli: u32,
    /// The last record read was an `XLOG_SWITCH`.
    after_switch: bool,
    /// The page magic of the WAL read (its major's), fixed by the first valid segment header.
    magic: Option<u16>,
}

/// The result of checking one page header.
#[derive(Clone)]
enum PageCheck {
    Valid {
        info: u16,
        rem_len: u32,
        header: u64,
    },
    Stale(String),
}

fn maxalign(n: u64) -> u64 {
    (n + 7) & !7
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// A PostgreSQL `TimestampTz` (µs since 2000-01-01 UTC).
pub fn timestamptz(micros: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros.checked_add(PG_EPOCH_MICROS)?)
}

impl WalReader {
    /// A reader of `timeline`'s WAL from `start`: a record's start, or a page boundary (a
    /// segment's start) where the continuation of an earlier record is skipped.
    pub fn new(segment_size: u64, timeline: TimelineId, start: Lsn) -> WalReader {
        WalReader {
            segment_size,
            timeline,
            page_size: 8192,
            pos: start,
            state: if start.0.is_multiple_of(8192) {
                State::MaySkip
            } else {
                State::AtRecord
            },
            prev: None,
            end_of_valid: start,
            last_page_tli: 0,
            after_switch: false,
            magic: None,
        }
    }

    /// The end of the last valid record read (the start while none was).
    pub fn end_of_valid_wal(&self) -> Lsn {
        self.end_of_valid
    }

    /// Why reading stopped, once it has.
    pub fn stop(&self) -> Option<&Stop> {
        match &self.state {
            State::Stopped { stop, .. } => Some(stop),
            _ => None,
        }
    }

    /// Reads the segment starting at `segment_start` (the one holding the reader's position;
    /// fed in order) and returns the records completed in it. After the end of the valid
    /// WAL ([`WalReader::stop`]), further segments yield nothing, unless they show that a
    /// failed record was damage rather than the end (then [`WalRecordError::BadRecord`]).
    pub fn feed(
        &mut self,
        segment_start: Lsn,
        bytes: &[u8],
    ) -> Result<Vec<Record>, WalRecordError> {
        let mut out = Vec::new();
        if let State::Stopped { suspect, .. } = &mut self.state {
            // A record failed at the end of the previous input: a valid first page here
            // proves the WAL went on.
            if let Some(err) = suspect.take() {
                if bytes.len() >= LONG_PAGE_HEADER_SIZE
                    && matches!(
                        self.check_page(bytes, segment_start, true)?,
                        PageCheck::Valid { .. }
                    )
                {
                    return Err(err);
                }
            }
            return Ok(out);
        }
        if !segment_start.0.is_multiple_of(self.segment_size)
            || self.pos.segment_number(self.segment_size)
                != segment_start.segment_number(self.segment_size)
        {
            return Err(WalRecordError::BadRecord {
                lsn: segment_start,
                why: format!(
                    "segment fed out of order: the reader is at {}, which is not in the segment starting at {segment_start}",
                    self.pos
                ),
            });
        }
        let len = (bytes.len() as u64).min(self.segment_size);
        let first = self.check_page(bytes, segment_start, true)?;
        if let PageCheck::Valid { .. } = first {
            let h = WalPageHeader::parse(bytes)
                .map_err(|_| WalRecordError::BadPage { lsn: segment_start })?;
            self.page_size = u64::from(h.block_size);
            self.magic = Some(h.magic);
        }
        let mut page_off = (self.pos.0 - segment_start.0) / self.page_size * self.page_size;
        while page_off + self.page_size <= len {
            let page_lsn = Lsn(segment_start.0 + page_off);
            let page = &bytes[page_off as usize..(page_off + self.page_size) as usize];
            let check = if page_off == 0 {
                first.clone()
            } else {
                self.check_page(page, page_lsn, false)?
            };
            self.read_page(page, page_lsn, check, bytes, segment_start, &mut out)?;
            if matches!(self.state, State::Stopped { .. })
                || self.pos.0 >= segment_start.0 + self.segment_size
            {
                break;
            }
            page_off += self.page_size;
        }
        if !matches!(self.state, State::Stopped { .. }) && len < self.segment_size {
            // A short input: nothing more can be read from this segment.
            self.stop_with(Stop::EndOfInput, None);
        }
        Ok(out)
    }

    fn stop_with(&mut self, stop: Stop, suspect: Option<WalRecordError>) {
        self.state = State::Stopped { stop, suspect };
    }

    /// Checks the header of the page at `lsn`. Unsupported versions and invalid headers of
    /// pages that belong here are errors; a page that is not this WAL's is stale.
    fn check_page(
        &self,
        page: &[u8],
        lsn: Lsn,
        segment_first: bool,
    ) -> Result<PageCheck, WalRecordError> {
        if page.len() < SHORT_PAGE_HEADER_SIZE {
            return Ok(PageCheck::Stale(format!("only {} bytes", page.len())));
        }
        let magic = u16_at(page, 0);
        let info = u16_at(page, 2);
        let tli = u32_at(page, 4);
        let addr = u64_at(page, 8);
        let rem_len = u32_at(page, 16);
        // The stream's major, once a segment header fixed it; before, any major read here.
        let ours = match self.magic {
            Some(m) => magic == m,
            None => reads_magic(magic),
        };
        if !ours {
            if segment_first && magic >> 9 == 0xD000 >> 9 {
                if !reads_magic(magic) {
                    return Err(WalRecordError::UnsupportedVersion(magic));
                }
                if addr == lsn.0 {
                    // Another major's WAL where this one's goes on: not a recycled page.
                    return Err(WalRecordError::BadPage { lsn });
                }
            }
            if magic == 0 && addr == 0 {
                return Ok(PageCheck::Stale("zeroes (a page never written)".into()));
            }
            if segment_first && addr == lsn.0 {
                return Err(WalRecordError::BadPage { lsn });
            }
            return Ok(PageCheck::Stale(format!(
                "invalid page magic 0x{magic:04X}"
            )));
        }
        if addr != lsn.0 {
            return Ok(PageCheck::Stale(format!(
                "the page's address is {} (stale WAL of a recycled segment)",
                Lsn(addr)
            )));
        }
        if tli > self.timeline.0 || tli < self.last_page_tli || tli == 0 {
            return Ok(PageCheck::Stale(format!(
                "out-of-sequence timeline {tli} (reading timeline {})",
                self.timeline
            )));
        }
        let long = info & XLP_LONG_HEADER != 0;
        if info & !XLP_ALL_FLAGS != 0 || long != segment_first {
            return Err(WalRecordError::BadPage { lsn });
        }
        if segment_first {
            let h = WalPageHeader::parse(page).map_err(|_| WalRecordError::BadPage { lsn })?;
            if u64::from(h.segment_size) != self.segment_size
                || u64::from(h.block_size) > self.segment_size
            {
                return Err(WalRecordError::BadPage { lsn });
            }
        }
        let header = if long {
            LONG_PAGE_HEADER_SIZE
        } else {
            SHORT_PAGE_HEADER_SIZE
        } as u64;
        Ok(PageCheck::Valid {
            info,
            rem_len,
            header,
        })
    }

    /// Whether any page after `from` in `bytes` has a valid header: the WAL goes on.
    fn valid_page_after(&self, bytes: &[u8], segment_start: Lsn, from: Lsn) -> bool {
        let len = (bytes.len() as u64).min(self.segment_size);
        let mut off = (from.0 - segment_start.0) / self.page_size * self.page_size + self.page_size;
        while off + self.page_size <= len {
            let page = &bytes[off as usize..(off + self.page_size) as usize];
            if matches!(
                self.check_page(page, Lsn(segment_start.0 + off), off == 0),
                Ok(PageCheck::Valid { .. })
            ) {
                return true;
            }
            off += self.page_size;
        }
        false
    }

    /// Ends the valid WAL at a record that fails its checks, or reports damage when a later
    /// page is valid.
    fn record_failed(
        &mut self,
        lsn: Lsn,
        why: String,
        bytes: &[u8],
        segment_start: Lsn,
        at: Lsn,
    ) -> Result<(), WalRecordError> {
        let err = WalRecordError::BadRecord {
            lsn,
            why: why.clone(),
        };
        if self.valid_page_after(bytes, segment_start, at) {
            return Err(err);
        }
        self.stop_with(Stop::EndOfWal { lsn, why }, Some(err));
        Ok(())
    }

    fn read_page(
        &mut self,
        page: &[u8],
        page_lsn: Lsn,
        check: PageCheck,
        bytes: &[u8],
        segment_start: Lsn,
        out: &mut Vec<Record>,
    ) -> Result<(), WalRecordError> {
        let (info, rem_len, header) = match check {
            PageCheck::Valid {
                info,
                rem_len,
                header,
            } => (info, rem_len, header),
            PageCheck::Stale(why) => {
                // A record in progress cut by a stale page is the torn end of the WAL.
                let lsn = match &self.state {
                    State::InRecord { start, .. } => *start,
                    _ => page_lsn,
                };
                self.stop_with(Stop::EndOfWal { lsn, why }, None);
                return Ok(());
            }
        };
        self.last_page_tli = u32_at(page, 4);
        let page_end = page_lsn.0 + self.page_size;
        let mut off = self.pos.0.saturating_sub(page_lsn.0);
        if off < header {
            off = header;
            let contrecord = info & XLP_FIRST_IS_CONTRECORD != 0;
            match std::mem::replace(&mut self.state, State::AtRecord) {
                State::MaySkip if contrecord => {
                    self.state = State::Skipping {
                        left: u64::from(rem_len),
                    };
                }
                State::MaySkip | State::AtRecord => {
                    if contrecord {
                        let why = "the page says it continues a record, but a record starts here"
                            .to_string();
                        return self.record_failed(
                            Lsn(page_lsn.0 + header),
                            why,
                            bytes,
                            segment_start,
                            page_lsn,
                        );
                    }
                }
                State::Skipping { left } => {
                    if !contrecord || u64::from(rem_len) != left {
                        let why = format!("expected the continuation of a record ({left} bytes), found xlp_rem_len {rem_len}");
                        return self.record_failed(page_lsn, why, bytes, segment_start, page_lsn);
                    }
                    self.state = State::Skipping { left };
                }
                State::InRecord { start, total, buf } => {
                    if info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                        // The rest of this record was lost in a crash; the WAL goes on here
                        // with an XLOG_OVERWRITE_CONTRECORD record.
                        self.state = State::AtRecord;
                    } else if !contrecord || u64::from(rem_len) != total - buf.len() as u64 {
                        let why = format!(
                            "its continuation at {page_lsn} has xlp_rem_len {rem_len}, {} bytes were expected",
                            total - buf.len() as u64
                        );
                        self.state = State::InRecord { start, total, buf };
                        return self.record_failed(start, why, bytes, segment_start, page_lsn);
                    } else {
                        self.state = State::InRecord { start, total, buf };
                    }
                }
                stopped @ State::Stopped { .. } => {
                    self.state = stopped;
                    return Ok(());
                }
            }
        }
        loop {
            let here = page_lsn.0 + off;
            match std::mem::replace(&mut self.state, State::AtRecord) {
                State::Skipping { left } => {
                    let take = left.min(page_end - here);
                    if take < left {
                        self.state = State::Skipping { left: left - take };
                        self.pos = Lsn(page_end);
                        return Ok(());
                    }
                    let end = maxalign(here + take);
                    self.end_of_valid = Lsn(end);
                    self.pos = Lsn(end);
                    off = end - page_lsn.0;
                }
                State::InRecord {
                    start,
                    total,
                    mut buf,
                } => {
                    let take = (total - buf.len() as u64).min(page_end - here);
                    buf.extend_from_slice(&page[off as usize..(off + take) as usize]);
                    if (buf.len() as u64) < total {
                        self.state = State::InRecord { start, total, buf };
                        self.pos = Lsn(page_end);
                        return Ok(());
                    }
                    let end = maxalign(here + take);
                    match self.finish_record(start, &buf, end) {
                        Ok(record) => {
                            self.after_switch = record.end.0 > end;
                            self.prev = Some(start);
                            self.end_of_valid = record.end;
                            self.pos = record.end;
                            out.push(record);
                            if self.after_switch {
                                // The rest of the segment is unused: on at the next one.
                                return Ok(());
                            }
                            off = end - page_lsn.0;
                        }
                        Err((why, damage_only)) => {
                            if damage_only {
                                return Err(WalRecordError::BadRecord { lsn: start, why });
                            }
                            return self.record_failed(
                                start,
                                why,
                                bytes,
                                segment_start,
                                Lsn(end - 1),
                            );
                        }
                    }
                }
                State::AtRecord | State::MaySkip => {
                    if off >= self.page_size {
                        self.pos = Lsn(page_end);
                        return Ok(());
                    }
                    let start = Lsn(here);
                    self.pos = start;
                    let total = u64::from(u32_at(page, off as usize));
                    if total == 0 {
                        self.stop_with(
                            Stop::EndOfWal {
                                lsn: start,
                                why: "record length 0 (nothing written here)".into(),
                            },
                            None,
                        );
                        return Ok(());
                    }
                    if total < RECORD_HEADER_SIZE as u64 || total > MAX_RECORD_SIZE {
                        let why = format!("invalid record length {total}");
                        return self.record_failed(start, why, bytes, segment_start, start);
                    }
                    if off + RECORD_HEADER_SIZE as u64 <= self.page_size {
                        // The header is on this page: check xl_prev before gathering (as
                        // PostgreSQL does), so stale records end the WAL at their start.
                        let xl_prev = Lsn(u64_at(page, off as usize + 8));
                        if let Some(prev) = self.prev {
                            if xl_prev != prev {
                                let why = format!(
                                    "xl_prev is {xl_prev}, the previous record starts at {prev}"
                                );
                                return self.record_failed(start, why, bytes, segment_start, start);
                            }
                        }
                    }
                    self.state = State::InRecord {
                        start,
                        total,
                        buf: Vec::with_capacity(total.min(1 << 20) as usize),
                    };
                }
                stopped @ State::Stopped { .. } => {
                    self.state = stopped;
                    return Ok(());
                }
            }
            if off >= self.page_size {
                self.pos = Lsn(page_end);
                return Ok(());
            }
        }
    }

    /// Checks a complete record (`buf`) and decodes it. The error's flag is true when the
    /// record's CRC held (its content is PostgreSQL's, yet not understood: never the end).
    fn finish_record(&self, start: Lsn, buf: &[u8], end: u64) -> Result<Record, (String, bool)> {
        let xl_prev = Lsn(u64_at(buf, 8));
        if let Some(prev) = self.prev {
            if xl_prev != prev {
                return Err((
                    format!("xl_prev is {xl_prev}, the previous record starts at {prev}"),
                    false,
                ));
            }
        }
        let stored = u32_at(buf, 20);
        let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        crc.update(&buf[RECORD_HEADER_SIZE..]);
        crc.update(&buf[..20]);
        let computed = crc.finalize() as u32;
        if computed != stored {
            return Err((
                format!("CRC mismatch (stored 0x{stored:08X}, computed 0x{computed:08X})"),
                false,
            ));
        }
        let info = buf[16];
        let rmid = buf[17];
        let main = main_data(buf).map_err(|why| (why, true))?;
        let bad = |what: &str| {
            (
                format!("{what} with {} bytes of main data", main.len()),
                true,
            )
        };
        let time_at = |o: usize| timestamptz(u64_at(main, o) as i64);
        let mut end = Lsn(end);
        let kind = match (rmid, info & !XLR_INFO_MASK) {
            (RM_XLOG_ID, XLOG_RESTORE_POINT) => {
                if main.len() < RESTORE_POINT_SIZE {
                    return Err(bad("a restore point"));
                }
                let name = &main[8..RESTORE_POINT_SIZE];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                RecordKind::RestorePoint {
                    name: String::from_utf8_lossy(name).into_owned(),
                    time: time_at(0).ok_or_else(|| bad("a restore point time out of range"))?,
                }
            }
            (RM_XLOG_ID, XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE) => {
                if main.len() < CHECKPOINT_TIME_OFFSET + 8 {
                    return Err(bad("a checkpoint"));
                }
                let secs = u64_at(main, CHECKPOINT_TIME_OFFSET) as i64;
                RecordKind::Checkpoint(
                    DateTime::from_timestamp(secs, 0)
                        .ok_or_else(|| bad("a checkpoint time out of range"))?,
                )
            }
            (RM_XLOG_ID, XLOG_SWITCH) => {
                // The rest of the segment is unused: the reader goes on at the next one.
                let seg = self.segment_size;
                end = Lsn((end.0 - 1) / seg * seg + seg);
                RecordKind::Other
            }
            (RM_XACT_ID, _) => {
                let op = info & XLOG_XACT_OPMASK;
                let commit = matches!(op, XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED);
                let abort = matches!(op, XLOG_XACT_ABORT | XLOG_XACT_ABORT_PREPARED);
                if commit || abort {
                    if main.len() < 8 {
                        return Err(bad("a commit or abort"));
                    }
                    let t = time_at(0).ok_or_else(|| bad("an xact_time out of range"))?;
                    if commit {
                        RecordKind::Commit(t)
                    } else {
                        RecordKind::Abort(t)
                    }
                } else {
                    RecordKind::Other
                }
            }
            _ => RecordKind::Other,
        };
        Ok(Record { start, end, kind })
    }
}

/// The main data of a complete record: walks the block references (`DecodeXLogRecord`),
/// which come first, to the main data, which comes last.
fn main_data(rec: &[u8]) -> Result<&[u8], String> {
    let total = rec.len();
    let mut p = RECORD_HEADER_SIZE;
    let mut data_total: usize = 0;
    let mut main_len: usize = 0;
    let short = || "the block headers run past the record's length".to_string();
    let need = |p: usize, n: usize| if p + n <= total { Ok(()) } else { Err(short()) };
    while total - p > data_total {
        need(p, 1)?;
        let id = rec[p];
        p += 1;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                need(p, 1)?;
                main_len = usize::from(rec[p]);
                p += 1;
                data_total += main_len;
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                need(p, 4)?;
                main_len = u32_at(rec, p) as usize;
                p += 4;
                data_total += main_len;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => {
                need(p, 2)?;
                p += 2;
            }
            XLR_BLOCK_ID_TOPLEVEL_XID => {
                need(p, 4)?;
                p += 4;
            }
            id if id <= XLR_MAX_BLOCK_ID => {
                // XLogRecordBlockHeader: id (read), fork_flags u8, data_length u16.
                need(p, 3)?;
                let fork_flags = rec[p];
                data_total += usize::from(u16_at(rec, p + 1));
                p += 3;
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    // XLogRecordBlockImageHeader: length u16, hole_offset u16, bimg_info u8.
                    need(p, 5)?;
                    data_total += usize::from(u16_at(rec, p));
                    let bimg_info = rec[p + 4];
                    p += 5;
                    if bimg_info & BKPIMAGE_HAS_HOLE != 0 && bimg_info & BKPIMAGE_COMPRESSED != 0 {
                        need(p, 2)?;
                        p += 2;
                    }
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    p += 12; // RelFileNode
                }
                p += 4; // BlockNumber
                need(p, 0)?;
            }
            other => return Err(format!("invalid block_id {other}")),
        }
    }
    if total - p != data_total {
        return Err(format!(
            "the record's length ({total}) does not match its headers ({p}) and data ({data_total})"
        ));
    }
    Ok(&rec[total - main_len..])
}
