//! Page checksums of the relation files a backup copies, verified as they stream by.
//!
//! From PostgreSQL 18, `initdb` turns data checksums on by default, and a DBA expects what
//! `pg_basebackup` does with them: every page of a relation file is checked on its way into
//! the backup, so that damage on the source's disk is found when it is backed up rather than
//! when the only copy is needed. The rules are `basebackup.c`'s (15 to 18 alike): only when
//! `pg_control` says checksums are on; only relation files (`<relfilenode>[_fork][.segment]`
//! in `global/`, `base/<db>/` or a tablespace's `<version>/<db>/`); a new page (`pd_upper`
//! 0) has no checksum; a page whose LSN is at or after the backup's start is skipped (WAL
//! replay rewrites it from a full-page image), and a mismatch is read again once from the
//! file before it counts (a page being written while it was read). The algorithm is
//! `storage/checksum_impl.h`'s, unchanged from 15 to 18.
//!
//! A mismatch does not stop the backup: the backup is an exact copy of the files, damaged
//! pages included, and the rest of the cluster is worth having; each damaged page is logged
//! (file and block) and counted, and `backup-push` warns at the end.

use std::os::unix::fs::FileExt;

use crate::lsn::Lsn;

/// `N_SUMS`: the parallel FNV-1a lanes of PostgreSQL's page checksum.
const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
/// `checksumBaseOffsets` of storage/checksum_impl.h.
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];
/// Offset of `pd_checksum` in `PageHeaderData` (after the 8-byte `pd_lsn`).
const PD_CHECKSUM: usize = 8;
/// Offset of `pd_upper`.
const PD_UPPER: usize = 14;

/// `pg_checksum_page`: the checksum of `page` (one block) as block `blkno` of its relation.
pub fn pg_checksum_page(page: &[u8], blkno: u32) -> u16 {
    let mut sums = BASE_OFFSETS;
    let comp = |sum: &mut u32, value: u32| {
        let tmp = *sum ^ value;
        *sum = tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17);
    };
    for (row, chunk) in page.chunks_exact(4 * N_SUMS).enumerate() {
        for (j, sum) in sums.iter_mut().enumerate() {
            let o = 4 * j;
            let mut word = u32::from_le_bytes(chunk[o..o + 4].try_into().expect("4 bytes"));
            // pd_checksum counts as zero (it is bytes 8..10 of the first row's third word).
            if row == 0 && o == PD_CHECKSUM {
                word &= 0xFFFF_0000;
            }
            comp(sum, word);
        }
    }
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            comp(sum, 0);
        }
    }
    let checksum = sums.iter().fold(0, |a, s| a ^ s) ^ blkno;
    (checksum % 65535 + 1) as u16
}

/// What the backup's pages are checked against.
#[derive(Debug, Clone, Copy)]
pub(super) struct PageRules {
    /// The backup's start: pages written since are skipped.
    pub(super) start_lsn: Lsn,
    /// The cluster's block size.
    pub(super) block_size: usize,
    /// Blocks per segment file of a relation (`RELSEG_SIZE`).
    pub(super) relseg_size: u32,
}

/// The segment number of a relation file at `rel` (relative to its stream's root: the data
/// directory, or a tablespace's directory), or `None` when it is not a relation file.
pub(super) fn relation_segment(rel: &str, tablespace: bool) -> Option<u32> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = rel.split('/').collect();
    let in_database = match parts.as_slice() {
        ["global", _] => !tablespace,
        ["base", db, _] => !tablespace && digits(db),
        [version, db, _] => tablespace && version.starts_with("PG_") && digits(db),
        _ => false,
    };
    if !in_database {
        return None;
    }
    let name = parts.last()?;
    let (stem, segment) = match name.split_once('.') {
        Some((stem, seg)) if digits(seg) => (stem, seg.parse().ok()?),
        Some(_) => return None,
        None => (*name, 0),
    };
    let (node, fork) = match stem.split_once('_') {
        Some((node, fork)) => (node, Some(fork)),
        None => (stem, None),
    };
    (digits(node) && fork.is_none_or(|f| matches!(f, "fsm" | "vm" | "init"))).then_some(segment)
}

/// A damaged page: its block number in the relation, stored and computed checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BadPage {
    pub(super) block: u32,
    pub(super) stored: u16,
    pub(super) computed: u16,
}

/// Checks the pages of one relation file as its bytes stream by.
pub(super) struct PageChecker {
    rules: PageRules,
    /// Block number (in the relation) of the page being gathered.
    block: u32,
    /// Offset in the file of that page.
    offset: u64,
    page: Vec<u8>,
    pub(super) bad: Vec<BadPage>,
}

impl PageChecker {
    /// A checker of segment `segment` of a relation.
    pub(super) fn new(rules: PageRules, segment: u32) -> PageChecker {
        PageChecker {
            rules,
            block: segment.wrapping_mul(rules.relseg_size),
            offset: 0,
            page: Vec::with_capacity(rules.block_size),
            bad: Vec::new(),
        }
    }

    /// The next bytes of the file, as copied into the backup; `file` is read again (at the
    /// page's offset) when a page fails.
    pub(super) fn feed(&mut self, mut bytes: &[u8], file: &std::fs::File) {
        while !bytes.is_empty() {
            let take = (self.rules.block_size - self.page.len()).min(bytes.len());
            self.page.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.page.len() == self.rules.block_size {
                if let Some(bad) = self.check(&self.page) {
                    // Read again: a page being written while it was copied.
                    let mut again = vec![0u8; self.rules.block_size];
                    let reread = file.read_exact_at(&mut again, self.offset).is_ok();
                    if !reread || self.check(&again).is_some() {
                        self.bad.push(bad);
                    }
                }
                self.page.clear();
                self.block = self.block.wrapping_add(1);
                self.offset += self.rules.block_size as u64;
            }
        }
    }

    /// The failure of `page` as block `self.block`, if it fails.
    fn check(&self, page: &[u8]) -> Option<BadPage> {
        let u16_at = |o: usize| u16::from_le_bytes([page[o], page[o + 1]]);
        if u16_at(PD_UPPER) == 0 {
            return None; // a new page: no checksum yet
        }
        let hi = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes"));
        let lo = u32::from_le_bytes(page[4..8].try_into().expect("4 bytes"));
        if Lsn((u64::from(hi) << 32) | u64::from(lo)) >= self.rules.start_lsn {
            return None; // rewritten by WAL replay from a full-page image
        }
        let stored = u16_at(PD_CHECKSUM);
        let computed = pg_checksum_page(page, self.block);
        (stored != computed).then_some(BadPage {
            block: self.block,
            stored,
            computed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files_are_told_apart() {
        assert_eq!(relation_segment("base/5/16384", false), Some(0));
        assert_eq!(relation_segment("base/5/16384.3", false), Some(3));
        assert_eq!(relation_segment("base/5/16384_fsm", false), Some(0));
        assert_eq!(relation_segment("base/5/16384_vm.1", false), Some(1));
        assert_eq!(relation_segment("global/1262", false), Some(0));
        assert_eq!(relation_segment("PG_18_202506291/5/16390", true), Some(0));
        for not in [
            "global/pg_control",
            "global/pg_filenode.map",
            "base/5/PG_VERSION",
            "base/5/pg_internal.init",
            "base/5/16384_xx",
            "base/5/16384.x",
            "base/x/16384",
            "pg_xact/0000",
            "PG_VERSION",
            "base/5/16384/1",
        ] {
            assert_eq!(relation_segment(not, false), None, "{not}");
        }
        assert_eq!(relation_segment("base/5/16384", true), None);
        assert_eq!(relation_segment("PG_18_202506291/5/16390", false), None);
    }

    /// A page as PostgreSQL lays out an empty heap page, with its checksum set.
    fn page(lsn: u64, blkno: u32) -> Vec<u8> {
        let mut p = vec![0u8; 8192];
        p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        p[12..14].copy_from_slice(&24u16.to_le_bytes()); // pd_lower
        p[14..16].copy_from_slice(&8192u16.to_le_bytes()); // pd_upper
        p[16..18].copy_from_slice(&8192u16.to_le_bytes()); // pd_special
        p[18..20].copy_from_slice(&(8192u16 | 4).to_le_bytes()); // size and layout version
        p[100] = 0x5A;
        let c = pg_checksum_page(&p, blkno);
        p[8..10].copy_from_slice(&c.to_le_bytes());
        p
    }

    #[test]
    fn the_stored_checksum_does_not_count_and_the_block_number_does() {
        let p = page(0x1_0000_0028, 7);
        let stored = u16::from_le_bytes([p[8], p[9]]);
        assert_eq!(pg_checksum_page(&p, 7), stored);
        assert_ne!(pg_checksum_page(&p, 8), stored);
        let mut q = p.clone();
        q[8] ^= 0xFF;
        assert_eq!(pg_checksum_page(&q, 7), stored);
    }

    #[test]
    fn damaged_pages_are_found_in_a_stream() {
        let rules = PageRules {
            start_lsn: Lsn(0x2_0000_0000),
            block_size: 8192,
            relseg_size: 131072,
        };
        // Segment 1 of a relation: blocks 131072 onwards; the third page damaged, the fourth
        // new, the fifth damaged but written after the backup's start.
        let mut file = Vec::new();
        for b in 0..5u32 {
            let lsn = if b == 4 { 0x2_0000_0100 } else { 0x1_0000_0028 };
            let mut p = page(lsn, 131072 + b);
            if b == 2 || b == 4 {
                p[4000] ^= 1;
            }
            if b == 3 {
                p.fill(0);
            }
            file.extend_from_slice(&p);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("16384.1");
        std::fs::write(&path, &file).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let mut c = PageChecker::new(rules, 1);
        // Fed in uneven chunks, as the tar writer reads.
        for chunk in file.chunks(3000) {
            c.feed(chunk, &f);
        }
        assert_eq!(c.bad.len(), 1, "{:?}", c.bad);
        assert_eq!(c.bad[0].block, 131074);
        assert_ne!(c.bad[0].stored, c.bad[0].computed);
        // A page torn in the copy but whole on disk: read again, not counted.
        let mut torn = file[..8192].to_vec();
        torn[5000] ^= 1;
        let mut c = PageChecker::new(rules, 1);
        c.feed(&torn, &f);
        assert!(c.bad.is_empty());
    }
}
