//! The S3 server of the broker's tests: the core harness's [`crate::s3()`], which must be
//! `s3s-fs` here.
//!
//! Why s3s-fs: it stores every object as a plain file under `<root>/<bucket>/<key>`
//! ([`S3Server::root_dir`]), so a test can see every key the nodes and the broker wrote
//! without an S3 listing of its own. The nodes read its endpoint and credentials from a
//! walarchive configuration file ([`S3Server::walarchive_config`]).

use std::path::Path;

use crate::S3Kind;
pub use crate::S3Server;

/// The S3 server of this test process (started on first use); panics under
/// `WALARCHIVE_TEST_S3=moto`, which keeps no files to look at.
pub fn s3() -> &'static S3Server {
    let s3 = crate::s3();
    assert_eq!(
        s3.kind,
        S3Kind::S3sFs,
        "the broker's tests read s3s-fs's files: unset WALARCHIVE_TEST_S3"
    );
    s3
}

/// Every file under `dir`, as paths relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
