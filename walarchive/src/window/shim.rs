//! A stand-in for `crate::walrecord` (design §1.1, written in parallel on its own branch),
//! with the same API (`WalReader`, `Record`, `RecordKind`, `WalRecordError`), so that the
//! restorable window can be built and tested before it lands; once it does, `window.rs`
//! imports `crate::walrecord` instead and this file is deleted.
//!
//! It reads PostgreSQL 15 WAL just enough for the window: page headers (the page address
//! tells valid WAL from a recycled segment's stale tail), records spanning pages and
//! segments (CRC-32C checked, `xl_prev` chained), the main data of commit/abort and
//! restore-point records. Anything it does not understand ends the valid WAL.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};

use crate::lsn::Lsn;
use crate::wal::TimelineId;

const BLCKSZ: u64 = 8192;
const SHORT_HEADER: u64 = 24;
const LONG_HEADER: u64 = 40;
const RECORD_HEADER: usize = 24;
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_RESTORE_POINT: u8 = 0x70;
/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH: i64 = 946_684_800;

/// One decoded WAL record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Where it starts.
    pub start: Lsn,
    /// Where it ends (the byte after its last).
    pub end: Lsn,
    /// What it is, as far as the window cares.
    pub kind: RecordKind,
}

/// The records the window needs to tell apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A commit (or commit of a prepared transaction), with its `xact_time`.
    Commit(DateTime<Utc>),
    /// An abort (or abort of a prepared transaction), with its `xact_time`.
    Abort(DateTime<Utc>),
    /// `pg_create_restore_point`.
    RestorePoint {
        /// Its name.
        name: String,
        /// When it was created.
        time: DateTime<Utc>,
    },
    /// A checkpoint (not decoded by this stand-in: reported as `Other`).
    #[allow(dead_code)]
    Checkpoint(DateTime<Utc>),
    /// Anything else.
    Other,
}

/// WAL this reader refuses.
#[derive(Debug, thiserror::Error)]
pub enum WalRecordError {
    /// Another PostgreSQL version's WAL.
    #[error("WAL page magic {0:#06X} is not PostgreSQL 15's")]
    UnsupportedVersion(u16),
}

/// Reads the records of consecutive segments fed in order.
pub struct WalReader {
    segment_size: u64,
    segments: VecDeque<(u64, Vec<u8>)>,
    start: u64,
    next: Option<u64>,
    prev: Option<u64>,
    ended: bool,
}

/// Why a read could not go on.
enum Stop {
    /// The bytes are not fed yet.
    More,
    /// The valid WAL ends here.
    End,
    /// Refused.
    Error(WalRecordError),
}

impl WalReader {
    /// A reader that starts at `start` (a segment's start: a record continued from the
    /// previous segment is skipped; else a record's start).
    pub fn new(segment_size: u64, _timeline: TimelineId, start: Lsn) -> Self {
        WalReader {
            segment_size,
            segments: VecDeque::new(),
            start: start.0,
            next: None,
            prev: None,
            ended: false,
        }
    }

    /// Feeds the segment starting at `segment_start`; returns the records completed by it.
    pub fn feed(
        &mut self,
        segment_start: Lsn,
        bytes: &[u8],
    ) -> Result<Vec<Record>, WalRecordError> {
        let mut out = Vec::new();
        if self.ended {
            return Ok(out);
        }
        self.segments.push_back((segment_start.0, bytes.to_vec()));
        loop {
            match self.step() {
                Ok(Some(r)) => out.push(r),
                Ok(None) | Err(Stop::More) => break,
                Err(Stop::End) => {
                    self.ended = true;
                    break;
                }
                Err(Stop::Error(e)) => return Err(e),
            }
        }
        let keep_from = self.next.unwrap_or(self.start);
        while self
            .segments
            .front()
            .is_some_and(|(s, b)| s + b.len() as u64 <= keep_from)
        {
            self.segments.pop_front();
        }
        Ok(out)
    }

    /// `n` bytes from `lsn`, all inside one page (so inside one segment).
    fn bytes(&self, lsn: u64, n: u64) -> Result<Vec<u8>, Stop> {
        self.segments
            .iter()
            .find(|(s, b)| lsn >= *s && lsn + n <= s + b.len() as u64)
            .map(|(s, b)| b[(lsn - s) as usize..(lsn - s + n) as usize].to_vec())
            .ok_or(Stop::More)
    }

    /// Checks the page header at `page` and returns its size and `xlp_info`/`xlp_rem_len`.
    fn page(&self, page: u64) -> Result<(u64, u16, u32), Stop> {
        let h = self.bytes(page, SHORT_HEADER)?;
        let magic = u16::from_le_bytes([h[0], h[1]]);
        match crate::wal::pg_major_for_magic(magic) {
            Some(15) => {}
            Some(_) => return Err(Stop::Error(WalRecordError::UnsupportedVersion(magic))),
            None => return Err(Stop::End),
        }
        let info = u16::from_le_bytes([h[2], h[3]]);
        let addr = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        if addr != page {
            return Err(Stop::End);
        }
        let rem = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
        let size = if page.is_multiple_of(self.segment_size) {
            LONG_HEADER
        } else {
            SHORT_HEADER
        };
        Ok((size, info, rem))
    }

    /// `n` bytes of record data from `lsn`, skipping page headers; and where they end.
    fn read(&self, mut lsn: u64, n: u64) -> Result<(Vec<u8>, u64), Stop> {
        let mut out = Vec::with_capacity(n as usize);
        while (out.len() as u64) < n {
            if lsn.is_multiple_of(BLCKSZ) {
                lsn += self.page(lsn)?.0;
            }
            let page_end = (lsn / BLCKSZ + 1) * BLCKSZ;
            let take = (n - out.len() as u64).min(page_end - lsn);
            out.extend(self.bytes(lsn, take)?);
            lsn += take;
        }
        Ok((out, lsn))
    }

    fn step(&mut self) -> Result<Option<Record>, Stop> {
        let mut p = match self.next {
            Some(p) => p,
            None => {
                let mut p = self.start;
                if p.is_multiple_of(BLCKSZ) {
                    let (size, info, rem) = self.page(p)?;
                    p += size;
                    if info & XLP_FIRST_IS_CONTRECORD != 0 {
                        p = maxalign(self.read(p, u64::from(rem))?.1);
                    }
                }
                self.next = Some(p);
                p
            }
        };
        if p.is_multiple_of(BLCKSZ) {
            p += self.page(p)?.0;
        }
        let (h, _) = self.read(p, RECORD_HEADER as u64)?;
        let tot_len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
        if tot_len < RECORD_HEADER {
            return Err(Stop::End);
        }
        let xl_prev = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        if self.prev.is_some_and(|prev| prev != xl_prev) {
            return Err(Stop::End);
        }
        let (rec, end) = self.read(p, tot_len as u64)?;
        let mut crc_input = rec[RECORD_HEADER..].to_vec();
        crc_input.extend_from_slice(&rec[..20]);
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &crc_input) as u32;
        if crc != u32::from_le_bytes(rec[20..24].try_into().expect("4 bytes")) {
            return Err(Stop::End);
        }
        let (info, rmid) = (rec[16], rec[17]);
        self.prev = Some(p);
        self.next = Some(if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH {
            (p / self.segment_size + 1) * self.segment_size
        } else {
            maxalign(end)
        });
        Ok(Some(Record {
            start: Lsn(p),
            end: Lsn(end),
            kind: decode(&rec),
        }))
    }
}

fn maxalign(x: u64) -> u64 {
    (x + 7) & !7
}

fn pg_time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us + PG_EPOCH * 1_000_000).unwrap_or_default()
}

/// The record's kind, from its rmgr, info and main data (the last bytes of the record).
fn decode(rec: &[u8]) -> RecordKind {
    let (info, rmid) = (rec[16], rec[17]);
    let mut pos = RECORD_HEADER;
    let get = |at: usize, n: usize| rec.get(at..at + n);
    let main_len = loop {
        let Some(&id) = rec.get(pos) else {
            break 0;
        };
        pos += 1;
        match id {
            255 => break get(pos, 1).map_or(0, |b| b[0] as usize),
            254 => {
                break get(pos, 4).map_or(0, |b| {
                    u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize
                })
            }
            253 => pos += 2,
            252 => pos += 4,
            0..=32 => {
                let Some(b) = get(pos, 3) else {
                    return RecordKind::Other;
                };
                let fork_flags = b[0];
                pos += 3;
                if fork_flags & 0x10 != 0 {
                    let Some(img) = get(pos, 5) else {
                        return RecordKind::Other;
                    };
                    pos += 5;
                    if img[4] & 0x01 != 0 && img[4] & (0x04 | 0x08 | 0x10) != 0 {
                        pos += 2;
                    }
                }
                if fork_flags & 0x80 == 0 {
                    pos += 12;
                }
                pos += 4;
            }
            _ => return RecordKind::Other,
        }
    };
    let Some(main) = rec.len().checked_sub(main_len).map(|at| &rec[at..]) else {
        return RecordKind::Other;
    };
    let time = || {
        main.get(..8)
            .map(|b| pg_time(i64::from_le_bytes(b.try_into().expect("8 bytes"))))
    };
    match (rmid, info) {
        (RM_XACT_ID, i) => match (i & 0x70, time()) {
            (0x00 | 0x30, Some(t)) => RecordKind::Commit(t),
            (0x20 | 0x40, Some(t)) => RecordKind::Abort(t),
            _ => RecordKind::Other,
        },
        (RM_XLOG_ID, i) if i & 0xF0 == XLOG_RESTORE_POINT => match (time(), main.get(8..72)) {
            (Some(time), Some(raw)) => {
                let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                RecordKind::RestorePoint {
                    name: String::from_utf8_lossy(&raw[..len]).into_owned(),
                    time,
                }
            }
            _ => RecordKind::Other,
        },
        _ => RecordKind::Other,
    }
}
