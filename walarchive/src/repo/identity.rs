//! The repository's identity: its descriptor, which cluster it archives, and when one may
//! be created.
//!
//! The descriptor (`walarchive.repo`) says which cluster the repository belongs to; every
//! object is bound to that cluster's system identifier (see [`crate::format`]), so it is read
//! once per process and remembered, and every bound object read is checked against it. It is
//! created by the first push of any kind (or the first backup), never replaced, and never
//! created where it would be wrong: in a prefix that holds the repository's objects but lost
//! its descriptor (that repository is refused to every push until `repo-repair` rebuilds it,
//! instead of being claimed by whichever cluster pushes next), or inside or around another
//! repository (their retention would take each other's objects).

use std::sync::atomic::Ordering;

use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use super::{storage_error, PutOutcome, Repository, DESCRIPTOR_KEY, REPOSITORY_FORMAT};
use crate::codec::Compression;
use crate::format::{self, ObjectHeader};
use crate::retry::retry;
use crate::storage::StorageError;
use crate::Error;

/// What the repository archives: one PostgreSQL cluster's WAL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Repository layout version.
    pub format_version: u32,
    /// The cluster's system identifier, as decimal text (as `pg_controldata` prints it).
    pub system_identifier: String,
    /// PostgreSQL major version, when the WAL page magic is a known one.
    pub pg_version: Option<u32>,
    /// The WAL page magic (`XLOG_PAGE_MAGIC`) of the cluster's WAL format.
    pub wal_page_magic: u16,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// When the repository was created (seconds since the Unix epoch).
    pub created_at: u64,
    /// The walarchive version that created it.
    pub created_by: String,
}

impl Descriptor {
    /// Test support, not for production use: the descriptor of cluster `system_identifier`
    /// with PostgreSQL 15's WAL and 1 MiB segments. Public (not `cfg(test)`) because
    /// walarchive-restore's unit tests use it too.
    #[doc(hidden)]
    pub fn for_tests(system_identifier: &str) -> Descriptor {
        Descriptor {
            format_version: REPOSITORY_FORMAT,
            system_identifier: system_identifier.into(),
            pg_version: Some(15),
            wal_page_magic: 0xD110,
            wal_segment_size: 1 << 20,
            created_at: 0,
            created_by: "test".into(),
        }
    }
}

/// How an identity taken from a data directory's pg_control (not read from the store)
/// names its source in `created_by`.
const FROM_PG_CONTROL: &str = "pg_control of ";

impl Descriptor {
    /// The data directory whose pg_control this identity was taken from, when it was not
    /// read from the store ([`Repository::assume_identity`]).
    pub fn data_directory(&self) -> Option<&str> {
        self.created_by.strip_prefix(FROM_PG_CONTROL)
    }

    /// Whose this identity is, for messages: the repository's, or a data directory's.
    pub fn whose(&self) -> String {
        match self.data_directory() {
            Some(dir) => format!("the data directory's ({dir}, global/pg_control)"),
            None => "the repository's".to_string(),
        }
    }
}

impl Repository {
    /// Test support, not for production use: takes `d` as the repository's descriptor
    /// without reading or writing one (for tests whose store counts requests).
    #[doc(hidden)]
    pub fn assume_descriptor_for_tests(&self, d: Descriptor) {
        self.remember(&d);
    }

    fn remember(&self, d: &Descriptor) {
        *self.identity.lock().unwrap_or_else(|e| e.into_inner()) = Some(d.clone());
        self.identity_assumed.store(false, Ordering::Relaxed);
    }

    /// Takes the cluster of a data directory (its `global/pg_control`) as the repository's,
    /// without reading the descriptor: `wal-fetch` restores for that data directory, whose
    /// cluster is the one the repository archives, and must not add a descriptor GET to every
    /// segment PostgreSQL asks for. Every object read is then checked against it (binding,
    /// page header); a mismatch is refused as for a descriptor. An answer that needs the
    /// repository to exist ("not found") reads the descriptor anyway
    /// ([`Repository::confirmed_descriptor`]).
    pub fn assume_identity(&self, id: &crate::control::ClusterIdentity) {
        let d = Descriptor {
            format_version: REPOSITORY_FORMAT,
            system_identifier: id.system_identifier.to_string(),
            pg_version: id.pg_version,
            wal_page_magic: id.wal_page_magic,
            wal_segment_size: id.wal_segment_size,
            created_at: 0,
            created_by: format!("{FROM_PG_CONTROL}{}", id.data_dir.display()),
        };
        *self.identity.lock().unwrap_or_else(|e| e.into_inner()) = Some(d);
        self.identity_assumed.store(true, Ordering::Relaxed);
    }

    /// The descriptor as read from the store (once per process): the proof that there is a
    /// repository at this URL, which an identity taken from pg_control is not.
    pub async fn confirmed_descriptor(&self) -> Result<Descriptor, Error> {
        match self.remembered() {
            Some(d) if !self.identity_assumed.load(Ordering::Relaxed) => Ok(d),
            _ => self.require_descriptor().await,
        }
    }

    fn remembered(&self) -> Option<Descriptor> {
        self.identity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The descriptor, read once per process (see [`Repository::require_descriptor`]).
    pub async fn cached_descriptor(&self) -> Result<Descriptor, Error> {
        match self.remembered() {
            Some(d) => Ok(d),
            None => self.require_descriptor().await,
        }
    }

    /// The repository's system identifier, which every object is bound to.
    pub async fn system_identifier(&self) -> Result<u64, Error> {
        let d = self.cached_descriptor().await?;
        parse_system_identifier(&d)
    }

    /// What the object at `relative` is to be bound to.
    pub async fn binding(&self, relative: &str) -> Result<format::Binding, Error> {
        Ok(format::Binding::new(
            self.system_identifier().await?,
            relative,
        ))
    }

    /// Reads the descriptor, if the repository has one. A bound descriptor must be bound to
    /// the system identifier it states.
    pub async fn descriptor(&self) -> Result<Option<Descriptor>, Error> {
        let (header, raw) = match self.get_decoded(DESCRIPTOR_KEY).await {
            Ok(got) => got,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let corrupt = |source| Error::Corrupt {
            key: self.key(DESCRIPTOR_KEY).to_string(),
            source,
        };
        let d: Descriptor = serde_json::from_slice(&raw).map_err(|e| {
            corrupt(format::FormatError::Decode(crate::codec::DecodeError {
                codec: "json",
                reason: e.to_string(),
            }))
        })?;
        let sysid = parse_system_identifier(&d)?;
        if let Some(b) = header.binding.filter(|b| b.system_identifier != sysid) {
            return Err(corrupt(format::FormatError::WrongSystem {
                object: b.system_identifier,
                repository: sysid,
            }));
        }
        self.remember(&d);
        Ok(Some(d))
    }

    /// Reads the descriptor. A missing one means there is no repository at this URL
    /// ([`Error::NoRepository`]), unless the prefix holds the repository's objects: then the
    /// descriptor was lost, and the error says how to rebuild it
    /// ([`Error::DescriptorMissing`]). That look costs one listing, on the failure path only.
    pub async fn require_descriptor(&self) -> Result<Descriptor, Error> {
        if let Some(d) = self.descriptor().await? {
            return Ok(d);
        }
        // A listing that fails (a missing bucket answers 404 to it, credentials may allow
        // GET only) proves nothing either way: "no repository", as before the look.
        match self.first_own_object().await {
            Ok(Some(example)) => Err(Error::DescriptorMissing {
                url: self.url.clone(),
                example,
            }),
            Ok(None) => Err(Error::NoRepository {
                url: self.url.clone(),
            }),
            Err(e) => {
                tracing::debug!("cannot tell whether {} holds objects: {e}", self.url);
                Err(Error::NoRepository {
                    url: self.url.clone(),
                })
            }
        }
    }

    /// The first object of the repository's own (other than the descriptor) under the
    /// prefix, stopping the listing there.
    pub async fn first_own_object(&self) -> Result<Option<String>, Error> {
        use crate::layout::{parse_key, OwnKey};
        use futures::StreamExt;
        let prefix = self.key("");
        retry(&self.policy, &format!("list {prefix}"), || async {
            let mut listing = self.store.list(Some(&prefix));
            while let Some(meta) = listing.next().await {
                let relative = self.relative(&meta.map_err(StorageError::from)?.location);
                if matches!(parse_key(&relative), Some(k) if k != OwnKey::Descriptor) {
                    return Ok(Some(relative));
                }
            }
            Ok(None)
        })
        .await
        .map_err(storage_error("list", &prefix))
    }

    /// Returns the repository's descriptor, creating it from `wanted` if there is none, and
    /// refuses WAL (`name`) whose cluster properties differ from the stored descriptor.
    pub async fn ensure_descriptor(
        &self,
        wanted: &Descriptor,
        name: &str,
    ) -> Result<Descriptor, Error> {
        let existing = match self.descriptor().await? {
            Some(d) => d,
            None if self.before_creating().await? == Prefix::DescriptorAppeared => {
                self.require_descriptor().await?
            }
            None => {
                match self.put_descriptor(wanted).await {
                    Ok(_) => {
                        tracing::info!(
                            "created repository {} for system identifier {}",
                            self.url,
                            wanted.system_identifier
                        );
                        return Ok(wanted.clone());
                    }
                    // Another process created it first: compare with theirs.
                    Err(Error::Conflict { .. }) => self.require_descriptor().await?,
                    Err(e) => return Err(e),
                }
            }
        };
        if existing.format_version > REPOSITORY_FORMAT {
            return Err(Error::Config(format!(
                "repository {} has format version {}, newer than this walarchive understands ({}): upgrade walarchive",
                self.url, existing.format_version, REPOSITORY_FORMAT
            )));
        }
        same_cluster(&existing, wanted, name)?;
        Ok(existing)
    }

    /// Creates the descriptor `d` where there is none, without looking at what the prefix
    /// holds (`repo-repair`, which rebuilt it from those very objects): `true` when this
    /// call wrote it; a descriptor written meanwhile must describe the same cluster.
    pub async fn create_descriptor(&self, d: &Descriptor, name: &str) -> Result<bool, Error> {
        match self.put_descriptor(d).await {
            Ok(PutOutcome::Stored { .. }) => Ok(true),
            Ok(PutOutcome::AlreadyStored) => Ok(false),
            Err(Error::Conflict { .. }) => {
                let existing = self.require_descriptor().await?;
                same_cluster(&existing, d, name)?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Stores descriptor `d` (create-only), bound to its own system identifier, and
    /// remembers it once stored.
    async fn put_descriptor(&self, d: &Descriptor) -> Result<PutOutcome, Error> {
        let json = serde_json::to_vec_pretty(d).expect("descriptor serializes");
        let binding = format::Binding::new(parse_system_identifier(d)?, DESCRIPTOR_KEY);
        let encoded = format::encode(&json, Compression::None, Some(&binding));
        let outcome = self.put_encoded(DESCRIPTOR_KEY, encoded).await?;
        if let PutOutcome::Stored { .. } = outcome {
            self.remember(d);
        }
        Ok(outcome)
    }

    /// Looks at the prefix before a descriptor is created there. A prefix that holds this
    /// repository's objects but no descriptor (deleted, lost) is not claimed by whichever
    /// cluster pushes next ([`Error::DescriptorMissing`]: `repo-repair` rebuilds it from the
    /// objects). Repositories do not nest ([`Error::NestedRepository`]): not inside another
    /// (a descriptor at an ancestor prefix, one HEAD per level) nor around one (a descriptor
    /// deeper under this prefix), since each one's retention would take the other's objects
    /// for its own. A descriptor seen meanwhile was created concurrently (another push of the
    /// same cluster): the caller compares with it. Creation is rare, so one listing of the
    /// prefix (stopping at the first object of ours) is affordable.
    async fn before_creating(&self) -> Result<Prefix, Error> {
        use crate::layout::{parse_key, OwnKey};
        use futures::StreamExt;
        enum Seen {
            Nothing,
            Descriptor,
            Ours(String),
            Nested(String),
        }
        let prefix = self.key("");
        let seen = retry(&self.policy, &format!("list {prefix}"), || async {
            let mut listing = self.store.list(Some(&prefix));
            let mut seen = Seen::Nothing;
            while let Some(meta) = listing.next().await {
                let relative = self.relative(&meta.map_err(StorageError::from)?.location);
                match parse_key(&relative) {
                    Some(OwnKey::Descriptor) => seen = Seen::Descriptor,
                    Some(_) => return Ok(Seen::Ours(relative)),
                    None if relative.ends_with(&format!("/{DESCRIPTOR_KEY}")) => {
                        return Ok(Seen::Nested(relative))
                    }
                    None => {}
                }
            }
            Ok(seen)
        })
        .await
        .map_err(storage_error("list", &prefix))?;
        match seen {
            Seen::Descriptor => return Ok(Prefix::DescriptorAppeared),
            // Our objects may be a concurrent creator's, whose descriptor came first.
            Seen::Ours(_) if self.exists(&self.key(DESCRIPTOR_KEY)).await? => {
                return Ok(Prefix::DescriptorAppeared)
            }
            Seen::Ours(key) => {
                return Err(Error::DescriptorMissing {
                    url: self.url.clone(),
                    example: key,
                })
            }
            Seen::Nested(key) => {
                let inner = key.trim_end_matches(DESCRIPTOR_KEY).trim_end_matches('/');
                return Err(Error::NestedRepository {
                    url: self.url.clone(),
                    relation: format!(
                        "another repository is stored under it, at {inner} (its {key})"
                    ),
                });
            }
            Seen::Nothing => {}
        }
        // Every prefix above this one, the store's root included.
        let parts: Vec<_> = self.prefix.parts().collect();
        for depth in (0..parts.len()).rev() {
            let above = Path::from_iter(parts[..depth].iter().cloned());
            let key = Path::from_iter(above.parts().chain(Path::from(DESCRIPTOR_KEY).parts()));
            let found = retry(&self.policy, &format!("head {key}"), || async {
                self.store.head(&key).await.map_err(StorageError::from)
            })
            .await;
            match found {
                Ok(_) => {
                    return Err(Error::NestedRepository {
                        url: self.url.clone(),
                        relation: format!(
                            "it is inside another repository, whose descriptor is {key}"
                        ),
                    })
                }
                Err(StorageError::NotFound) => {}
                // Credentials limited to this prefix cannot look above it.
                Err(e @ (StorageError::AccessDenied(_) | StorageError::Permanent(_))) => {
                    tracing::warn!(
                        "cannot check whether {key} exists ({e}): creating the repository without knowing whether it is inside another one"
                    );
                }
                Err(e) => return Err(storage_error("head", &key)(e)),
            }
        }
        Ok(Prefix::Empty)
    }

    /// Refuses a bound object (read at `relative`) of another cluster's repository.
    pub async fn check_system(&self, relative: &str, header: &ObjectHeader) -> Result<(), Error> {
        let Some(b) = &header.binding else {
            return Ok(());
        };
        let d = self.cached_descriptor().await?;
        let repository = parse_system_identifier(&d)?;
        if b.system_identifier == repository {
            return Ok(());
        }
        // Say whose identifier the object was compared with: a data directory's pg_control
        // says nothing about which cluster this repository holds.
        let source = match d.data_directory() {
            Some(dir) => format::FormatError::NotTheDataDirectorys {
                object: b.system_identifier,
                cluster: repository,
                data_dir: dir.to_string(),
            },
            None => format::FormatError::WrongSystem {
                object: b.system_identifier,
                repository,
            },
        };
        Err(Error::Corrupt {
            key: self.key(relative).to_string(),
            source,
        })
    }
}

/// The system identifier of descriptor `d` as a number.
fn parse_system_identifier(d: &Descriptor) -> Result<u64, Error> {
    d.system_identifier.parse().map_err(|_| Error::Corrupt {
        key: DESCRIPTOR_KEY.into(),
        source: format::FormatError::Decode(crate::codec::DecodeError {
            codec: "json",
            reason: format!(
                "system_identifier {:?} is not a number",
                d.system_identifier
            ),
        }),
    })
}

/// A property that makes WAL one cluster's: what every identity check compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalProperty {
    /// The cluster's system identifier.
    SystemIdentifier,
    /// The WAL segment size.
    SegmentSize,
    /// The WAL page magic (the PostgreSQL major version's WAL format).
    PageMagic,
}

impl WalProperty {
    fn of(self, d: &Descriptor) -> String {
        match self {
            WalProperty::SystemIdentifier => d.system_identifier.clone(),
            WalProperty::SegmentSize => d.wal_segment_size.to_string(),
            WalProperty::PageMagic => format!("0x{:04X}", d.wal_page_magic),
        }
    }
}

/// The first property of `order` on which `a` and `b` differ, with `a`'s value and `b`'s as
/// text; `None` when they are the same cluster's WAL. Each check keeps its own order (it
/// decides which difference a message names when several differ) and its own words.
pub fn first_difference(
    a: &Descriptor,
    b: &Descriptor,
    order: [WalProperty; 3],
) -> Option<(WalProperty, String, String)> {
    order.into_iter().find_map(|p| {
        let (x, y) = (p.of(a), p.of(b));
        (x != y).then_some((p, x, y))
    })
}

/// Refuses `found` (what file `name` belongs to) when it is not the cluster `repo`
/// describes. Another major version is named as such, first.
pub(crate) fn same_cluster(repo: &Descriptor, found: &Descriptor, name: &str) -> Result<(), Error> {
    use WalProperty::*;
    if repo.wal_page_magic != found.wal_page_magic {
        return Err(Error::OtherMajor {
            name: name.to_string(),
            repo: major_text(repo),
            found: major_text(found),
        });
    }
    match first_difference(repo, found, [SystemIdentifier, SegmentSize, PageMagic]) {
        None => Ok(()),
        Some((property, repo, wal)) => Err(Error::ForeignCluster {
            name: name.to_string(),
            field: match property {
                SystemIdentifier => "system identifier",
                SegmentSize => "WAL segment size",
                PageMagic => "WAL format (page magic)",
            },
            repo,
            wal,
        }),
    }
}

/// The PostgreSQL major of `d`'s WAL format as the messages show it: "17", or
/// "? (WAL page magic 0xD1FF)" for a format this walarchive does not know.
fn major_text(d: &Descriptor) -> String {
    match crate::wal::pg_major_for_magic(d.wal_page_magic).or(d.pg_version) {
        Some(m) => m.to_string(),
        None => format!("? (WAL page magic 0x{:04X})", d.wal_page_magic),
    }
}

/// What a prefix without a descriptor holds (see `Repository::before_creating`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prefix {
    /// None of this repository's objects: a repository may be created.
    Empty,
    /// A descriptor was created meanwhile.
    DescriptorAppeared,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;

    use super::*;
    use crate::retry::RetryPolicy;
    use crate::storage::Backend;

    fn repo() -> Repository {
        let r = Repository::with_store(
            Arc::new(InMemory::new()),
            Path::from("some/prefix"),
            Backend::Local,
            "memory://test",
            RetryPolicy::default(),
            Compression::default(),
        );
        r.assume_descriptor_for_tests(descriptor("1"));
        r
    }

    fn descriptor(sysid: &str) -> Descriptor {
        Descriptor {
            wal_segment_size: 1 << 24,
            ..Descriptor::for_tests(sysid)
        }
    }

    #[tokio::test]
    async fn descriptor_refuses_other_clusters() {
        let r = repo();
        assert_eq!(r.descriptor().await.unwrap(), None);
        assert!(matches!(
            r.require_descriptor().await,
            Err(Error::NoRepository { .. })
        ));
        r.ensure_descriptor(&descriptor("1"), "x").await.unwrap();
        r.ensure_descriptor(&descriptor("1"), "x").await.unwrap();
        let e = r
            .ensure_descriptor(&descriptor("2"), "seg")
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::ForeignCluster {
                    field: "system identifier",
                    ..
                }
            ),
            "{e}"
        );
        let mut other = descriptor("1");
        other.wal_segment_size = 1 << 20;
        assert!(matches!(
            r.ensure_descriptor(&other, "s").await,
            Err(Error::ForeignCluster { .. })
        ));
        // Another major (after pg_upgrade: another system identifier too) is named as such.
        let upgraded = Descriptor {
            wal_page_magic: 0xD113,
            pg_version: Some(16),
            ..descriptor("2")
        };
        let e = r.ensure_descriptor(&upgraded, "seg").await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::ForeignCluster);
        assert!(
            e.to_string().starts_with(
                "seg is from PostgreSQL 16 but this repository holds PostgreSQL 15's WAL"
            ),
            "{e}"
        );
    }

    /// A prefix holding this repository's objects but no descriptor is refused to every
    /// cluster (status 6, naming repo-repair), its own included; stray objects that are not
    /// walarchive's do not stop a repository from being created.
    #[tokio::test]
    async fn a_repository_whose_descriptor_is_gone_is_not_claimed() {
        let r = repo();
        r.put_new("notes/README", b"not ours", Compression::None)
            .await
            .unwrap();
        r.ensure_descriptor(&descriptor("1"), "x").await.unwrap();
        let seg = Repository::wal_key(&"000000010000000000000003".parse().unwrap());
        r.put_new(&seg, b"segment", Compression::None)
            .await
            .unwrap();
        r.delete(DESCRIPTOR_KEY).await.unwrap();
        for sysid in ["1", "2"] {
            let e = r
                .ensure_descriptor(&descriptor(sysid), "00000002.history")
                .await
                .unwrap_err();
            assert!(matches!(e, Error::DescriptorMissing { .. }), "{e}");
            assert_eq!(e.kind(), crate::ErrorKind::Config);
            let text = e.to_string();
            assert!(
                text.contains("repo-repair") && text.contains(&seg),
                "{text}"
            );
        }
        assert_eq!(r.descriptor().await.unwrap(), None);
        // What a descriptor created meanwhile looks like to a second creator: compared.
        r.create_descriptor(&descriptor("1"), "repair")
            .await
            .unwrap();
        r.ensure_descriptor(&descriptor("1"), "x").await.unwrap();
    }

    /// A repository is not created inside another one, nor around one; siblings are fine.
    #[tokio::test]
    async fn repositories_do_not_nest() {
        let store = Arc::new(InMemory::new());
        let at = |prefix: &str| {
            Repository::with_store(
                store.clone(),
                Path::from(prefix),
                Backend::Local,
                &format!("memory://{prefix}"),
                RetryPolicy::default(),
                Compression::default(),
            )
        };
        at("a/b/c")
            .ensure_descriptor(&descriptor("1"), "x")
            .await
            .unwrap();
        at("a/b/d")
            .ensure_descriptor(&descriptor("2"), "x")
            .await
            .unwrap();
        let e = at("a/b")
            .ensure_descriptor(&descriptor("3"), "x")
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NestedRepository { .. }), "{e}");
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        assert!(
            e.to_string()
                .contains("another repository is stored under it, at c"),
            "{e}"
        );
        for inside in ["a/b/c/wal", "a/b/c/x/y"] {
            let e = at(inside)
                .ensure_descriptor(&descriptor("1"), "x")
                .await
                .unwrap_err();
            assert!(
                e.to_string().contains(
                    "it is inside another repository, whose descriptor is a/b/c/walarchive.repo"
                ),
                "{e}"
            );
        }
        // At the store's root, too.
        at("")
            .ensure_descriptor(&descriptor("4"), "x")
            .await
            .unwrap_err();
        let root = Arc::new(InMemory::new());
        let r = Repository::with_store(
            root.clone(),
            Path::from(""),
            Backend::Local,
            "memory://",
            RetryPolicy::default(),
            Compression::default(),
        );
        r.ensure_descriptor(&descriptor("1"), "x").await.unwrap();
        let e = Repository::with_store(
            root,
            Path::from("sub"),
            Backend::Local,
            "memory://sub",
            RetryPolicy::default(),
            Compression::default(),
        )
        .ensure_descriptor(&descriptor("1"), "x")
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("descriptor is walarchive.repo"),
            "{e}"
        );
        assert!(at("a/b/e").descriptor().await.unwrap().is_none());
    }
}
