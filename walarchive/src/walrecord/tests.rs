//! Hand-built WAL: a tiny writer lays out pages and records as PostgreSQL 15 does (page
//! headers, continuation records, MAXALIGN, CRC-32C, xl_prev), small enough to follow.

use super::*;

const SEG: u64 = 1 << 20;
const PAGE: u64 = 8192;

fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    for p in parts {
        d.update(p);
    }
    d.finalize() as u32
}

/// Writes records into segments `base_seg..base_seg + n` of timeline 1.
struct Wal {
    base: u64,
    bytes: Vec<u8>,
    pos: u64,
    prev: u64,
    magic: u16,
}

impl Wal {
    fn new(base_seg: u64, segments: u64) -> Wal {
        Wal {
            base: base_seg * SEG,
            bytes: vec![0; (segments * SEG) as usize],
            pos: base_seg * SEG,
            prev: 0,
            magic: PG15_PAGE_MAGIC,
        }
    }

    fn put(&mut self, lsn: u64, b: &[u8]) {
        let o = (lsn - self.base) as usize;
        self.bytes[o..o + b.len()].copy_from_slice(b);
    }

    fn page_header(&mut self, lsn: u64, rem_len: u32) {
        let h = header_bytes(self.magic, lsn, rem_len);
        self.put(lsn, &h);
    }
}

fn header_bytes(magic: u16, lsn: u64, rem_len: u32) -> Vec<u8> {
    let long = lsn.is_multiple_of(SEG);
    let mut info = if long { 0x0002 } else { 0 };
    if rem_len > 0 {
        info |= 0x0001;
    }
    let mut h = Vec::new();
    h.extend_from_slice(&magic.to_le_bytes());
    h.extend_from_slice(&(info as u16).to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&lsn.to_le_bytes());
    h.extend_from_slice(&rem_len.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    if long {
        h.extend_from_slice(&7_000_000_000_000_000_001u64.to_le_bytes());
        h.extend_from_slice(&(SEG as u32).to_le_bytes());
        h.extend_from_slice(&(PAGE as u32).to_le_bytes());
    }
    h
}

impl Wal {
    fn header_size(lsn: u64) -> u64 {
        if lsn.is_multiple_of(SEG) {
            40
        } else {
            24
        }
    }

    /// Appends a record with `payload` (block headers and data) after the header; returns
    /// its start.
    fn record_raw(&mut self, rmid: u8, info: u8, payload: &[u8], xl_prev: Option<u64>) -> Lsn {
        if self.pos.is_multiple_of(PAGE) {
            self.page_header(self.pos, 0);
            self.pos += Self::header_size(self.pos);
        }
        let start = self.pos;
        let total = (RECORD_HEADER_SIZE + payload.len()) as u32;
        let mut rec = Vec::new();
        rec.extend_from_slice(&total.to_le_bytes());
        rec.extend_from_slice(&700u32.to_le_bytes());
        rec.extend_from_slice(&xl_prev.unwrap_or(self.prev).to_le_bytes());
        rec.push(info);
        rec.push(rmid);
        rec.extend_from_slice(&[0, 0]);
        let crc = crc32c(&[payload, &rec[..20]]);
        rec.extend_from_slice(&crc.to_le_bytes());
        rec.extend_from_slice(payload);
        let mut left = &rec[..];
        loop {
            let page_end = (self.pos / PAGE + 1) * PAGE;
            let n = left.len().min((page_end - self.pos) as usize);
            self.put(self.pos, &left[..n]);
            self.pos += n as u64;
            left = &left[n..];
            if left.is_empty() {
                break;
            }
            self.page_header(self.pos, left.len() as u32);
            self.pos += Self::header_size(self.pos);
        }
        self.pos = maxalign(self.pos);
        self.prev = start;
        Lsn(start)
    }

    fn record(&mut self, rmid: u8, info: u8, main: &[u8]) -> Lsn {
        self.record_raw(rmid, info, &main_payload(main), None)
    }

    /// The end of the last record as PostgreSQL's reader reports it.
    fn end(&self) -> Lsn {
        Lsn(self.pos)
    }

    fn segment(&self, n: u64) -> (Lsn, &[u8]) {
        let o = (n * SEG) as usize;
        (Lsn(self.base + n * SEG), &self.bytes[o..o + SEG as usize])
    }

    fn switch(&mut self) -> Lsn {
        let start = self.record(RM_XLOG_ID, XLOG_SWITCH, &[]);
        self.pos = (self.pos - 1) / SEG * SEG + SEG;
        start
    }
}

fn main_payload(main: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    if main.is_empty() {
    } else if main.len() <= 255 {
        p.push(XLR_BLOCK_ID_DATA_SHORT);
        p.push(main.len() as u8);
    } else {
        p.push(XLR_BLOCK_ID_DATA_LONG);
        p.extend_from_slice(&(main.len() as u32).to_le_bytes());
    }
    p.extend_from_slice(main);
    p
}

fn pg_time(t: &str) -> (i64, DateTime<Utc>) {
    let dt: DateTime<Utc> = t.parse().unwrap();
    (dt.timestamp_micros() - PG_EPOCH_MICROS, dt)
}

fn xact(us: i64) -> Vec<u8> {
    let mut m = us.to_le_bytes().to_vec();
    m.extend_from_slice(&[0; 8]); // xinfo and the rest: not read
    m
}

fn restore_point(us: i64, name: &str) -> Vec<u8> {
    let mut m = us.to_le_bytes().to_vec();
    let mut n = [0u8; 64];
    n[..name.len()].copy_from_slice(name.as_bytes());
    m.extend_from_slice(&n);
    m
}

fn checkpoint(secs: i64) -> Vec<u8> {
    let mut m = vec![0u8; 88];
    m[CHECKPOINT_TIME_OFFSET..CHECKPOINT_TIME_OFFSET + 8].copy_from_slice(&secs.to_le_bytes());
    m
}

fn read_all(wal: &Wal, segments: u64) -> (WalReader, Vec<Record>) {
    let mut r = WalReader::new(SEG, TimelineId(1), Lsn(wal.base));
    let mut all = Vec::new();
    for n in 0..segments {
        let (start, bytes) = wal.segment(n);
        all.extend(r.feed(start, bytes).unwrap());
    }
    (r, all)
}

#[test]
fn timestamps_count_from_2000() {
    assert_eq!(
        timestamptz(0).unwrap(),
        "2000-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
    assert_eq!(
        timestamptz(-1).unwrap(),
        "1999-12-31T23:59:59.999999Z"
            .parse::<DateTime<Utc>>()
            .unwrap()
    );
}

#[test]
fn decodes_the_record_kinds_it_knows() {
    let (t1, d1) = pg_time("2026-12-07T10:15:00.123456Z");
    let (t2, d2) = pg_time("2026-12-07T10:15:01Z");
    let mut wal = Wal::new(1, 1);
    let ck = wal.record(
        RM_XLOG_ID,
        XLOG_CHECKPOINT_SHUTDOWN,
        &checkpoint(1_796_638_500),
    );
    let c = wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    let other = wal.record(10, 0x00, &[1, 2, 3]);
    let a = wal.record(RM_XACT_ID, XLOG_XACT_ABORT | 0x80, &xact(t2));
    let prep = wal.record(RM_XACT_ID, 0x10, &xact(t2)); // PREPARE: not a commit
    let cp = wal.record(RM_XACT_ID, XLOG_XACT_COMMIT_PREPARED, &xact(t2));
    let ap = wal.record(RM_XACT_ID, XLOG_XACT_ABORT_PREPARED, &xact(t1));
    let long_name = "n".repeat(63);
    let rp1 = wal.record(RM_XLOG_ID, XLOG_RESTORE_POINT, &restore_point(t1, "a"));
    let rp2 = wal.record(
        RM_XLOG_ID,
        XLOG_RESTORE_POINT,
        &restore_point(t2, &long_name),
    );
    let on = wal.record(
        RM_XLOG_ID,
        XLOG_CHECKPOINT_ONLINE,
        &checkpoint(1_796_638_501),
    );
    let end = wal.end();

    let (r, records) = read_all(&wal, 1);
    let kinds: Vec<(Lsn, RecordKind)> = records.iter().map(|r| (r.start, r.kind.clone())).collect();
    let secs = |s| DateTime::from_timestamp(s, 0).unwrap();
    assert_eq!(
        kinds,
        vec![
            (ck, RecordKind::Checkpoint(secs(1_796_638_500))),
            (c, RecordKind::Commit(d1)),
            (other, RecordKind::Other),
            (a, RecordKind::Abort(d2)),
            (prep, RecordKind::Other),
            (cp, RecordKind::Commit(d2)),
            (ap, RecordKind::Abort(d1)),
            (
                rp1,
                RecordKind::RestorePoint {
                    name: "a".into(),
                    time: d1
                }
            ),
            (
                rp2,
                RecordKind::RestorePoint {
                    name: long_name.clone(),
                    time: d2
                }
            ),
            (on, RecordKind::Checkpoint(secs(1_796_638_501))),
        ]
    );
    // The first record starts after the long header; each ends where the next starts.
    assert_eq!(ck, Lsn(SEG + 40));
    for w in records.windows(2) {
        assert_eq!(w[0].end, w[1].start);
    }
    assert_eq!(records.last().unwrap().end, end);
    assert_eq!(r.end_of_valid_wal(), end);
    assert!(matches!(r.stop(), Some(Stop::EndOfWal { lsn, .. }) if *lsn == end));

    let s = summarize(Lsn(SEG), SEG, wal.segment(0).1).unwrap();
    assert_eq!(s.end_of_valid_wal, end);
    assert_eq!(s.first_record, Some(ck));
    assert_eq!(s.last_record, Some(on));
    assert_eq!(s.last_xact, Some((ap, d1)));
    assert_eq!(
        s.restore_points,
        vec![(rp1, "a".into(), d1), (rp2, long_name, d2)]
    );
    assert!(matches!(s.stop, Stop::EndOfWal { .. }));
}

#[test]
fn records_span_pages_and_segments() {
    let (t1, d1) = pg_time("2026-12-07T10:15:00Z");
    let mut wal = Wal::new(1, 3);
    let first = wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    // A record spanning several pages.
    let big = wal.record(10, 0, &vec![7u8; 20_000]);
    // Fill to 8 bytes before a page end so the next header is split across two pages.
    while (PAGE - wal.pos % PAGE) > 200 {
        wal.record(10, 0, &[1; 8]);
    }
    let gap = PAGE - wal.pos % PAGE - 8 - RECORD_HEADER_SIZE as u64 - 2;
    wal.record(10, 0, &vec![1; gap as usize]);
    assert_eq!(PAGE - wal.pos % PAGE, 8);
    let split_header = wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    // Up to near the segment's end, then a record spanning the rest of segment 1, all of
    // segment 2 and into segment 3.
    while wal.pos < 2 * SEG - 3000 {
        wal.record(10, 0, &[2; 1000]);
    }
    let last_in_1 = Lsn(wal.prev);
    let spanning = wal.record(10, 0, &vec![3u8; (SEG + 5000) as usize]);
    let after = wal.record(RM_XACT_ID, XLOG_XACT_ABORT, &xact(t1));
    let end = wal.end();
    assert_eq!(spanning.segment_number(SEG), 1);
    assert_eq!(after.segment_number(SEG), 3);

    let (r, records) = read_all(&wal, 3);
    let starts: Vec<Lsn> = records.iter().map(|r| r.start).collect();
    assert_eq!(starts[0], first);
    assert_eq!(starts[1], big);
    assert!(starts.contains(&split_header));
    assert!(records
        .iter()
        .any(|r| r.start == split_header && r.kind == RecordKind::Commit(d1)));
    assert_eq!(&starts[starts.len() - 2..], &[spanning, after]);
    assert_eq!(r.end_of_valid_wal(), end);

    // Segment by segment: a record running into the next segment is not counted, and the
    // next segments skip its continuation.
    let s1 = summarize(Lsn(SEG), SEG, wal.segment(0).1).unwrap();
    assert_eq!(s1.last_record, Some(last_in_1));
    assert_eq!(s1.stop, Stop::EndOfInput);
    assert_eq!(s1.last_xact, Some((split_header, d1)));
    let s2 = summarize(Lsn(2 * SEG), SEG, wal.segment(1).1).unwrap();
    assert_eq!((s2.first_record, s2.last_record), (None, None));
    assert_eq!(s2.end_of_valid_wal, Lsn(2 * SEG));
    assert_eq!(s2.stop, Stop::EndOfInput);
    let s3 = summarize(Lsn(3 * SEG), SEG, wal.segment(2).1).unwrap();
    assert_eq!(s3.first_record, Some(after));
    assert_eq!(s3.last_xact, Some((after, d1)));
    assert_eq!(s3.end_of_valid_wal, end);
}

#[test]
fn block_references_are_walked_to_the_main_data() {
    let (t1, d1) = pg_time("2026-12-07T10:15:00Z");
    let mut payload = vec![
        XLR_BLOCK_ID_ORIGIN,
        1,
        0,
        XLR_BLOCK_ID_TOPLEVEL_XID,
        9,
        9,
        9,
        9,
    ];
    // Block 0: 10 bytes of data, its own relation.
    payload.extend_from_slice(&[0, 0x20, 10, 0]);
    payload.extend_from_slice(&[0; 12 + 4]);
    // Block 1: a compressed image with a hole (100 bytes), 5 bytes of data, same relation.
    payload.extend_from_slice(&[1, 0x80 | 0x10 | 0x20, 5, 0]);
    payload.extend_from_slice(&[100, 0, 0, 0, 0x01 | 0x08, 0x10, 0]);
    payload.extend_from_slice(&[0; 4]);
    let main = xact(t1);
    payload.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, main.len() as u8]);
    payload.extend_from_slice(&[0xEE; 10 + 100 + 5]);
    payload.extend_from_slice(&main);
    let mut wal = Wal::new(1, 1);
    let c = wal.record_raw(RM_XACT_ID, XLOG_XACT_COMMIT, &payload, None);
    let (_, records) = read_all(&wal, 1);
    assert_eq!(records[0].start, c);
    assert_eq!(records[0].kind, RecordKind::Commit(d1));

    // A length that disagrees with the block headers is refused, not guessed at: the CRC
    // holds, so it is PostgreSQL's record and not understood.
    let mut wal = Wal::new(1, 1);
    payload.push(0);
    wal.record_raw(RM_XACT_ID, XLOG_XACT_COMMIT, &payload, None);
    let err = summarize(Lsn(SEG), SEG, wal.segment(0).1).unwrap_err();
    assert!(
        matches!(err, WalRecordError::BadRecord { lsn, .. } if lsn == c),
        "{err}"
    );
}

#[test]
fn a_switch_ends_the_segment() {
    let (t1, _) = pg_time("2026-12-07T10:15:00Z");
    let mut wal = Wal::new(1, 2);
    wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    let sw = wal.switch();
    // Pages after the switch carry headers but no records (as PostgreSQL leaves them).
    wal.page_header(SEG + PAGE, 0);
    let next = wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    assert_eq!(next, Lsn(2 * SEG + 40));
    let (_, records) = read_all(&wal, 2);
    assert_eq!(records[1].start, sw);
    assert_eq!(records[1].end, Lsn(2 * SEG));
    assert_eq!(records[2].start, next);
    let s = summarize(Lsn(SEG), SEG, wal.segment(0).1).unwrap();
    assert_eq!(s.stop, Stop::Switch);
    assert_eq!(s.end_of_valid_wal, Lsn(2 * SEG));
    assert_eq!(s.last_record, Some(sw));
}

#[test]
fn stale_pages_end_the_valid_wal() {
    let (t1, d1) = pg_time("2026-12-07T10:15:00Z");
    let mut wal = Wal::new(1, 1);
    while wal.pos < SEG + 3 * PAGE {
        wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    }
    let last = Lsn(wal.prev);
    let end = wal.end();
    // The rest of the segment: what a recycled segment holds, pages of 16 MiB earlier.
    let stale_from = (end.0 / PAGE + 1) * PAGE;
    for p in (stale_from..2 * SEG).step_by(PAGE as usize) {
        wal.put(p, &header_bytes(PG15_PAGE_MAGIC, p - SEG, 0));
        wal.put(p + 24, &[0x55; 100]);
    }
    // The page the last record ends on holds zeroes after it.
    let s = summarize(Lsn(SEG), SEG, wal.segment(0).1).unwrap();
    assert_eq!(s.end_of_valid_wal, end);
    assert_eq!(s.last_record, Some(last));
    assert_eq!(s.last_xact, Some((last, d1)));
    assert!(
        matches!(&s.stop, Stop::EndOfWal { lsn, .. } if *lsn == end),
        "{:?}",
        s.stop
    );

    // A record cut by a stale page: the torn end of the WAL, at the record's start.
    let mut wal2 = Wal::new(1, 1);
    wal2.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    let torn = wal2.record(10, 0, &vec![1; 10_000]);
    wal2.put(SEG + PAGE, &header_bytes(PG15_PAGE_MAGIC, PAGE, 0));
    let s = summarize(Lsn(SEG), SEG, wal2.segment(0).1).unwrap();
    assert_eq!(s.end_of_valid_wal, torn);
    assert!(
        matches!(&s.stop, Stop::EndOfWal { lsn, why } if *lsn == torn && why.contains("address")),
        "{:?}",
        s.stop
    );
}

#[test]
fn a_zeroed_segment_holds_no_wal() {
    let s = summarize(Lsn(SEG), SEG, &vec![0; SEG as usize]).unwrap();
    assert_eq!(s.end_of_valid_wal, Lsn(SEG));
    assert_eq!(s.first_record, None);
    assert!(matches!(s.stop, Stop::EndOfWal { lsn, .. } if lsn == Lsn(SEG)));
}

#[test]
fn a_bad_crc_is_damage_in_the_middle_and_the_end_at_the_end() {
    let (t1, _) = pg_time("2026-12-07T10:15:00Z");
    let mut wal = Wal::new(1, 1);
    // (start, the offset of the record's last byte: never in a page header)
    let mut records = Vec::new();
    while wal.pos < SEG + 4 * PAGE {
        let start = wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
        // 42 bytes, MAXALIGNed to 48: the last byte is 7 before the aligned end.
        records.push((start, (wal.pos - 7 - SEG) as usize));
    }
    // In the middle (valid pages follow): an error naming the record.
    let (victim, at) = records[10];
    let mut bad = wal.bytes.clone();
    bad[at] ^= 0x40;
    let err = summarize(Lsn(SEG), SEG, &bad).unwrap_err();
    assert!(
        matches!(&err, WalRecordError::BadRecord { lsn, why } if *lsn == victim && why.contains("CRC")),
        "{err}"
    );
    // The last record, nothing valid after it: a torn write, the end of the WAL.
    let (last, at) = *records.last().unwrap();
    let mut bad = wal.bytes.clone();
    bad[at] ^= 0x40;
    let s = summarize(Lsn(SEG), SEG, &bad).unwrap();
    assert_eq!(s.last_record, Some(records[records.len() - 2].0));
    assert_eq!(s.end_of_valid_wal, last);
    assert!(
        matches!(&s.stop, Stop::EndOfWal { lsn, why } if *lsn == last && why.contains("CRC")),
        "{:?}",
        s.stop
    );
}

#[test]
fn a_bad_crc_at_a_segment_end_is_judged_by_the_next_segment() {
    let (t1, _) = pg_time("2026-12-07T10:15:00Z");
    let mut wal = Wal::new(1, 2);
    while wal.pos < 2 * SEG - 100 {
        wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    }
    let victim = Lsn(wal.prev);
    wal.switch();
    wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    wal.bytes[(victim.0 - SEG + 30) as usize] ^= 1;
    let mut r = WalReader::new(SEG, TimelineId(1), Lsn(SEG));
    let (s1, b1) = wal.segment(0);
    r.feed(s1, b1).unwrap();
    assert!(matches!(r.stop(), Some(Stop::EndOfWal { lsn, .. }) if *lsn == victim));
    let (s2, b2) = wal.segment(1);
    let err = r.feed(s2, b2).unwrap_err();
    assert!(
        matches!(err, WalRecordError::BadRecord { lsn, .. } if lsn == victim),
        "{err}"
    );
}

#[test]
fn a_wrong_xl_prev_ends_the_wal() {
    let (t1, _) = pg_time("2026-12-07T10:15:00Z");
    let mut wal = Wal::new(1, 1);
    wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    let good = wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    let wrong = wal.record_raw(
        RM_XACT_ID,
        XLOG_XACT_COMMIT,
        &main_payload(&xact(t1)),
        Some(12345),
    );
    let s = summarize(Lsn(SEG), SEG, wal.segment(0).1).unwrap();
    assert_eq!(s.last_record, Some(good));
    assert!(
        matches!(&s.stop, Stop::EndOfWal { lsn, why } if *lsn == wrong && why.contains("xl_prev"))
    );
}

#[test]
fn other_versions_and_bad_headers_are_refused() {
    let (t1, _) = pg_time("2026-12-07T10:15:00Z");
    let mut wal = Wal::new(1, 1);
    wal.magic = 0xD10D; // PostgreSQL 14
    wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    let err = summarize(Lsn(SEG), SEG, wal.segment(0).1).unwrap_err();
    assert_eq!(err, WalRecordError::UnsupportedVersion(0xD10D));
    assert!(err.to_string().contains("PostgreSQL 14"), "{err}");

    // The right address, but another segment size: not guessed at.
    let mut wal = Wal::new(1, 1);
    wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    wal.put(SEG + 32, &(2 * SEG as u32).to_le_bytes());
    let err = summarize(Lsn(SEG), SEG, wal.segment(0).1).unwrap_err();
    assert_eq!(err, WalRecordError::BadPage { lsn: Lsn(SEG) });
}

#[test]
fn every_known_major_is_read_and_one_stream_is_one_major() {
    let (t1, d1) = pg_time("2026-12-07T10:15:00Z");
    for (major, magic) in WAL_FORMATS {
        let mut wal = Wal::new(1, 2);
        wal.magic = magic;
        let c = wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
        let s = summarize(Lsn(SEG), SEG, wal.segment(0).1)
            .unwrap_or_else(|e| panic!("PostgreSQL {major}: {e}"));
        assert_eq!(s.last_xact, Some((c, d1)), "PostgreSQL {major}");
    }
    // PostgreSQL 16's segment, then one of 18 where 16's WAL goes on: damage, not the end.
    let mut wal = Wal::new(1, 2);
    wal.magic = 0xD113;
    wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    wal.switch();
    wal.magic = 0xD118;
    wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    let mut r = WalReader::new(SEG, TimelineId(1), Lsn(SEG));
    let (s1, b1) = wal.segment(0);
    assert_eq!(r.feed(s1, b1).unwrap().len(), 2);
    let (s2, b2) = wal.segment(1);
    assert_eq!(
        r.feed(s2, b2).unwrap_err(),
        WalRecordError::BadPage { lsn: s2 }
    );
}

#[test]
fn segments_must_be_fed_in_order() {
    let (t1, _) = pg_time("2026-12-07T10:15:00Z");
    let mut wal = Wal::new(1, 2);
    wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    wal.switch();
    wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    let mut r = WalReader::new(SEG, TimelineId(1), Lsn(SEG));
    let (s2, b2) = wal.segment(1);
    assert!(matches!(
        r.feed(s2, b2),
        Err(WalRecordError::BadRecord { .. })
    ));
}

#[test]
fn reading_can_start_at_a_record() {
    let (t1, d1) = pg_time("2026-12-07T10:15:00Z");
    let mut wal = Wal::new(1, 1);
    wal.record(RM_XACT_ID, XLOG_XACT_COMMIT, &xact(t1));
    let second = wal.record(RM_XACT_ID, XLOG_XACT_ABORT, &xact(t1));
    let mut r = WalReader::new(SEG, TimelineId(1), second);
    let (s, b) = wal.segment(0);
    let records = r.feed(s, b).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].start, &records[0].kind),
        (second, &RecordKind::Abort(d1))
    );
}
