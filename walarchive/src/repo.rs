//! The repository: key layout, the descriptor, and never-overwrite storage of objects.
//!
//! Layout under the repository prefix (format version 1):
//!
//! ```text
//! walarchive.repo                                  descriptor (JSON in a walarchive object)
//! wal/<TLI>/<LOG>/<segment>                        WAL segments, e.g. wal/00000001/00000000/000000010000000000000003
//! wal/<TLI>/<LOG>/<segment>.partial                last segment of an abandoned timeline
//! wal/<TLI>/<LOG>/<segment>.<OFFSET>.backup        backup history files
//! wal/history/<TLI>.history                        timeline history files
//! basebackups/<name>/...                           base backups (next format revision)
//! ```
//!
//! Grouping by timeline then by 4 GiB "log" makes listing one timeline, or one range of it,
//! a prefix listing instead of a scan of the whole archive. History files sit apart because
//! recovery probes for them by timeline alone.
//!
//! Objects are only ever created, never replaced: a second push of the same name is
//! compared with what is stored, and a difference is an error naming both checksums.
//!
//! Every object is bound to its key and the repository's system identifier (see
//! [`crate::format`]): the repository binds what it writes to the descriptor's cluster and
//! refuses, on every read, an object bound to another key or another cluster. The
//! descriptor is read once per process and remembered; it is never replaced, and a prefix
//! that lost it is refused to every push until `repo-repair` rebuilds it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::codec::Compression;
use crate::format::{self, ObjectHeader};
use crate::layout;
use crate::retry::{retry, RetryPolicy};
use crate::storage::{self, Backend, StorageEnv, StorageError, StorageOptions};
use crate::wal::WalFileName;
use crate::Error;

mod identity;

pub(crate) use identity::same_cluster;
pub use identity::{first_difference, Descriptor, WalProperty};

pub use crate::layout::DESCRIPTOR_KEY;

/// The repository layout version this build writes and reads.
pub const REPOSITORY_FORMAT: u32 = 1;

/// Result of storing an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// Newly stored.
    Stored {
        /// Bytes uploaded (header and compressed body).
        stored_len: u64,
    },
    /// An identical object was already there.
    AlreadyStored,
}

/// Whether a put's failure says the store does not support create-only puts (Swift's S3
/// API: 501 "Conditional object PUTs are not supported").
fn conditional_put_refused(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("status code: 501") || m.contains("notimplemented") || m.contains("not implemented")
}

/// An opened repository.
#[derive(Clone)]
pub struct Repository {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    backend: Backend,
    url: String,
    /// Retry policy for every storage call.
    pub policy: RetryPolicy,
    /// Codec for new objects.
    pub compression: Compression,
    /// Whether the store takes create-only puts; cleared when it answers that it does not
    /// (see `put_checked_after`).
    conditional_puts: Arc<AtomicBool>,
    /// The descriptor, once read or created: what every object written is bound to and
    /// every bound object read must be bound to (a descriptor is never replaced, only
    /// deleted, and then nothing is written until `repo-repair` restores the same one).
    identity: Arc<std::sync::Mutex<Option<Descriptor>>>,
    /// Whether `identity` was taken from a data directory's pg_control rather than read
    /// from the store (see `Repository::assume_identity`).
    identity_assumed: Arc<std::sync::atomic::AtomicBool>,
    /// The most an object of a local repository may grant (see
    /// [`Repository::narrow_to`]); `None`: objects found are left as they are.
    file_mode: Option<crate::config::FileMode>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("url", &self.url)
            .field("backend", &self.backend)
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl Repository {
    /// Opens the repository at `url` (see [`storage::open`]).
    pub fn open(
        url: &str,
        options: &StorageOptions,
        env: &StorageEnv,
        policy: RetryPolicy,
        compression: Compression,
    ) -> Result<Self, Error> {
        let loc = storage::open(url, options, env, &policy)?;
        Ok(Self::with_store(
            loc.store,
            loc.prefix,
            loc.backend,
            url,
            policy,
            compression,
        ))
    }

    /// Test support, not for production use: a repository in process memory under
    /// `prefix` that tries every request once, taking [`Descriptor::for_tests`] of cluster
    /// 1 as its own without one stored (until one is created). Public (not `cfg(test)`)
    /// because walarchive-restore's unit tests use it too.
    #[doc(hidden)]
    pub fn in_memory_for_tests(prefix: &str, compression: Compression) -> Self {
        let r = Repository::with_store(
            Arc::new(object_store::memory::InMemory::new()),
            Path::from(prefix),
            Backend::Local,
            "memory://test",
            RetryPolicy {
                max_attempts: 1,
                ..Default::default()
            },
            compression,
        );
        r.assume_descriptor_for_tests(Descriptor::for_tests("1"));
        r
    }

    /// A repository over an already built store (tests, fault injection).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        backend: Backend,
        url: &str,
        policy: RetryPolicy,
        compression: Compression,
    ) -> Self {
        Repository {
            store,
            prefix,
            backend,
            url: url.to_string(),
            policy,
            compression,
            conditional_puts: Arc::new(AtomicBool::new(true)),
            identity: Arc::new(std::sync::Mutex::new(None)),
            identity_assumed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            file_mode: None,
        }
    }

    /// In a local repository, an identical object found already stored (a re-push) is
    /// narrowed to at most `mode` (the caller creates new objects with exactly that mode):
    /// an older walarchive left objects 0644 under umask 022, and the next push of each
    /// repairs it.
    pub fn narrow_to(&mut self, mode: crate::config::FileMode) {
        self.file_mode = Some(mode);
    }

    /// See [`Repository::narrow_to`]. A mode that cannot be changed is logged, not fatal:
    /// the object is stored and intact, and failing the push would only stop archiving.
    fn narrow_existing(&self, key: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let Some(allowed) = self.file_mode.map(|m| m.file()) else {
            return;
        };
        if self.backend != Backend::Local {
            return;
        }
        // object_store's local store, rooted at `/`, keeps key `a/b` at `/a/b`.
        let path = std::path::Path::new("/").join(key.as_ref());
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if !meta.is_file() || mode & !allowed == 0 {
            return;
        }
        let narrowed = mode & allowed;
        match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(narrowed)) {
            Ok(()) => tracing::info!("{key}: mode {mode:04o} narrowed to {narrowed:04o}"),
            Err(e) => tracing::warn!("{key}: cannot narrow its mode {mode:04o}: {e}"),
        }
    }

    /// The repository URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The backend kind.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The full key of a path relative to the repository root.
    pub fn key(&self, relative: &str) -> Path {
        Path::from_iter(self.prefix.parts().chain(Path::from(relative).parts()))
    }

    /// The relative key of a WAL file (see [`layout::wal_key`]).
    pub fn wal_key(name: &WalFileName) -> String {
        layout::wal_key(name)
    }

    /// The content of the object at `relative`, verified and checked against its name but
    /// not against the repository's system identifier: for a repository that may have no
    /// descriptor (`repo-repair`).
    pub async fn get_without_descriptor(&self, relative: &str) -> Result<Vec<u8>, Error> {
        Ok(self.get_decoded(relative).await?.1)
    }

    /// The system identifier the object at `relative` is bound to (none for an object
    /// written before binding), from its header alone (one ranged read); an object bound to
    /// another name is [`Error::Corrupt`].
    pub async fn bound_system_identifier(&self, relative: &str) -> Result<Option<u64>, Error> {
        use object_store::{GetOptions, GetRange};
        let key = self.key(relative);
        let head = retry(&self.policy, &format!("get {key}"), || async {
            let opts = GetOptions {
                range: Some(GetRange::Bounded(0..format::MAX_HEADER_LEN as u64)),
                ..Default::default()
            };
            let r = self
                .store
                .get_opts(&key, opts)
                .await
                .map_err(StorageError::from)?;
            r.bytes().await.map_err(StorageError::from)
        })
        .await
        .map_err(|source| match source {
            StorageError::NotFound => Error::NotFound {
                key: key.to_string(),
            },
            source => storage_error("get", &key)(source),
        })?;
        let corrupt = |source| Error::Corrupt {
            key: key.to_string(),
            source,
        };
        let header = ObjectHeader::parse(&head).map_err(corrupt)?;
        check_name(relative, &header).map_err(corrupt)?;
        Ok(header.binding.map(|b| b.system_identifier))
    }

    /// Stores `raw` under `relative` unless an object is already there, bound to its name
    /// and the repository's system identifier (so the repository must have a descriptor).
    /// An identical existing object is success ([`PutOutcome::AlreadyStored`]); a different
    /// one is [`Error::Conflict`]; an existing object that fails verification is
    /// [`Error::Corrupt`].
    pub async fn put_new(
        &self,
        relative: &str,
        raw: &[u8],
        compression: Compression,
    ) -> Result<PutOutcome, Error> {
        let binding = self.binding(relative).await?;
        self.put_encoded(relative, format::encode(raw, compression, Some(&binding)))
            .await
    }

    /// [`Repository::put_new`] for an object the caller already encoded (off the async
    /// threads, for large objects).
    pub async fn put_encoded(
        &self,
        relative: &str,
        encoded: format::EncodedObject,
    ) -> Result<PutOutcome, Error> {
        let key = self.key(relative);
        // An object bound to another name would be refused by every read: never store one.
        check_name(relative, &encoded.header).map_err(|source| Error::Corrupt {
            key: key.to_string(),
            source,
        })?;
        // What an object already there must match: the same content (or, for a body
        // digest, the same object): see compare_existing.
        let ours = encoded.header;
        // Look first: a re-push after a crash then costs one small request instead of an
        // upload, and stores that ignore conditional puts still never get overwritten.
        if self.exists(&key).await? {
            return self.compare_existing(relative, &key, ours).await;
        }
        let stored_len = encoded.bytes.len() as u64;
        let payload = PutPayload::from(Bytes::from(encoded.bytes));
        if !self.conditional_puts.load(Ordering::Relaxed) {
            return self
                .put_checked_after(relative, &key, payload, ours, stored_len)
                .await;
        }
        match self.put_retrying(&key, &payload, PutMode::Create).await {
            Ok(()) => Ok(PutOutcome::Stored { stored_len }),
            // Created meanwhile by someone else, or by our own attempt whose answer was lost.
            Err(StorageError::AlreadyExists) => self.compare_existing(relative, &key, ours).await,
            Err(StorageError::Permanent(m))
                if m.contains("412") || m.to_ascii_lowercase().contains("precondition") =>
            {
                self.compare_existing(relative, &key, ours).await
            }
            Err(StorageError::Permanent(m)) if conditional_put_refused(&m) => {
                tracing::warn!(
                    "{} does not support create-only puts ({m}): checking for an existing object before each put and reading each object back after it instead",
                    self.url
                );
                self.conditional_puts.store(false, Ordering::Relaxed);
                self.put_checked_after(relative, &key, payload, ours, stored_len)
                    .await
            }
            Err(StorageError::NotFound) => Err(storage_error("put", &key)(
                StorageError::Permanent("the bucket or container does not exist".into()),
            )),
            Err(source) => Err(storage_error("put", &key)(source)),
        }
    }

    /// One put with `mode`, retried by the retry helper.
    async fn put_retrying(
        &self,
        key: &Path,
        payload: &PutPayload,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        // A create-only put that failed may still have been carried out (its answer lost):
        // before uploading again, one HEAD looks. Re-sending the body only to hear 412 cost
        // the upload, and a store answering 412 before reading the body leaves the
        // connection unusable for the next request (a GET failing with "error sending
        // request" right after, seen with s3s-fs).
        let attempts = std::sync::atomic::AtomicU32::new(0);
        retry(&self.policy, &format!("put {key}"), || {
            let (payload, store, key) = (payload.clone(), self.store.clone(), key.clone());
            let look_first =
                attempts.fetch_add(1, Ordering::Relaxed) > 0 && mode == PutMode::Create;
            let opts = PutOptions {
                mode: mode.clone(),
                ..Default::default()
            };
            async move {
                if look_first {
                    match store.head(&key).await.map_err(StorageError::from) {
                        Ok(_) => return Err(StorageError::AlreadyExists),
                        Err(StorageError::NotFound) => {}
                        Err(e) => return Err(e),
                    }
                }
                store
                    .put_opts(&key, payload, opts)
                    .await
                    .map(|_| ())
                    .map_err(StorageError::from)
            }
        })
        .await
    }

    /// A put for stores without create-only puts (Swift's S3 API answers 501 to them): the
    /// object was just found absent; it is put, then read back, and only our own content
    /// counts as stored. Another writer racing between the check and the put makes one of
    /// the two fail with a conflict instead of both succeeding silently.
    async fn put_checked_after(
        &self,
        relative: &str,
        key: &Path,
        payload: PutPayload,
        ours: ObjectHeader,
        stored_len: u64,
    ) -> Result<PutOutcome, Error> {
        if self.exists(key).await? {
            return self.compare_existing(relative, key, ours).await;
        }
        self.put_retrying(key, &payload, PutMode::Overwrite)
            .await
            .map_err(storage_error("put", key))?;
        // Read back what the store now returns: only our own content counts as stored
        // (compare_existing waits within the retry bound for an object not shown yet).
        match self.compare_existing(relative, key, ours).await? {
            PutOutcome::AlreadyStored => Ok(PutOutcome::Stored { stored_len }),
            stored => Ok(stored),
        }
    }

    async fn compare_existing(
        &self,
        relative: &str,
        key: &Path,
        ours: ObjectHeader,
    ) -> Result<PutOutcome, Error> {
        // Every caller has just seen the object (a HEAD answering 200, a create-only put
        // refused, our own put acknowledged), so a GET answering 404 now is a store not
        // showing it yet, not a missing object: Swift's S3 API does that under load, seen
        // once in a few hundred puts both right after its own 200 to a put and right after a
        // HEAD answering 200. Such a 404 is retried like a transient failure, within the
        // retry policy's bound, and reported as a storage error when it persists.
        let fetched = retry(&self.policy, &format!("compare with {key}"), || async {
            match self.get_verified(relative).await {
                Err(Error::NotFound { .. }) => Err(StorageError::Transient(
                    "the store said the object exists but does not return it (yet)".into(),
                )),
                other => Ok(other),
            }
        })
        .await
        .map_err(storage_error("get", key))?;
        let (header, content) = fetched?;
        let kind = ours.digest_kind();
        // Content digests compare the content, whatever digest the stored object carries (a
        // segment archived as version 1, SHA-256, re-pushed as version 3, BLAKE3): the
        // stored content was just decoded and verified. A body digest (backup parts)
        // compares the object itself: same version, same digest.
        let (stored_kind, stored) = if kind.of_content() {
            (kind, header.content_digest(kind, &content))
        } else {
            (header.digest_kind(), header.digest)
        };
        if stored_kind == kind && stored == ours.digest {
            self.narrow_existing(key);
            Ok(PutOutcome::AlreadyStored)
        } else {
            let name = relative.rsplit('/').next().unwrap_or(relative).to_string();
            tracing::debug!("conflict at {key}");
            Err(Error::Conflict {
                name,
                stored: format!("{stored_kind} {stored}"),
                new: format!("{kind} {}", ours.digest),
            })
        }
    }

    /// Whether an object exists at the full key `key`.
    pub async fn exists(&self, key: &Path) -> Result<bool, Error> {
        let r = retry(&self.policy, &format!("head {key}"), || async {
            self.store.head(key).await.map_err(StorageError::from)
        })
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound) => Ok(false),
            Err(source) => Err(storage_error("head", key)(source)),
        }
    }

    /// Downloads the object at `relative`, verifies it (digest; for a bound object, its name
    /// and the repository's system identifier: see [`format`]), and returns its header and
    /// content.
    pub async fn get_verified(&self, relative: &str) -> Result<(ObjectHeader, Vec<u8>), Error> {
        let got = self.get_decoded(relative).await?;
        self.check_system(relative, &got.0).await?;
        Ok(got)
    }

    /// Downloads the object at `relative`, verifies its digest and, when bound, its name
    /// (not the system identifier: see [`Repository::get_verified`]).
    pub async fn get_decoded(&self, relative: &str) -> Result<(ObjectHeader, Vec<u8>), Error> {
        let key = self.key(relative);
        let bytes = retry(&self.policy, &format!("get {key}"), || async {
            let r = self.store.get(&key).await.map_err(StorageError::from)?;
            r.bytes().await.map_err(StorageError::from)
        })
        .await
        .map_err(|source| match source {
            StorageError::NotFound => Error::NotFound {
                key: key.to_string(),
            },
            source => storage_error("get", &key)(source),
        })?;
        let corrupt = |source| Error::Corrupt {
            key: key.to_string(),
            source,
        };
        let (header, raw) = format::decode(&bytes).map_err(corrupt)?;
        check_name(relative, &header).map_err(corrupt)?;
        Ok((header, raw))
    }

    /// Deletes the object at `relative` (absent objects are not an error).
    pub async fn delete(&self, relative: &str) -> Result<(), Error> {
        let key = self.key(relative);
        let r = retry(&self.policy, &format!("delete {key}"), || async {
            self.store.delete(&key).await.map_err(StorageError::from)
        })
        .await;
        match r {
            Ok(()) | Err(StorageError::NotFound) => Ok(()),
            Err(source) => Err(storage_error("delete", &key)(source)),
        }
    }

    /// Lists the objects under `relative_prefix` (keys relative to the repository root), sorted.
    pub async fn list(&self, relative_prefix: &str) -> Result<Vec<Listed>, Error> {
        use futures::TryStreamExt;
        let prefix = self.key(relative_prefix);
        let items = retry(&self.policy, &format!("list {prefix}"), || async {
            self.store
                .list(Some(&prefix))
                .try_collect::<Vec<_>>()
                .await
                .map_err(StorageError::from)
        })
        .await
        .map_err(storage_error("list", &prefix))?;
        let mut out: Vec<Listed> = items
            .into_iter()
            .map(|m| Listed {
                key: self.relative(&m.location),
                size: m.size,
                last_modified: m.last_modified,
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The immediate "sub-directories" of `relative_prefix` (relative keys, sorted).
    pub async fn list_prefixes(&self, relative_prefix: &str) -> Result<Vec<String>, Error> {
        let prefix = self.key(relative_prefix);
        let result = retry(&self.policy, &format!("list {prefix}"), || async {
            self.store
                .list_with_delimiter(Some(&prefix))
                .await
                .map_err(StorageError::from)
        })
        .await
        .map_err(storage_error("list", &prefix))?;
        let mut out: Vec<String> = result
            .common_prefixes
            .iter()
            .map(|p| self.relative(p))
            .collect();
        out.sort();
        Ok(out)
    }

    fn relative(&self, location: &Path) -> String {
        let root_parts = self.prefix.parts().count();
        let rel: Vec<_> = location
            .parts()
            .skip(root_parts)
            .map(|p| p.as_ref().to_string())
            .collect();
        rel.join("/")
    }
}

/// Refuses a bound object read at `relative` that is bound to another name.
fn check_name(relative: &str, header: &ObjectHeader) -> Result<(), format::FormatError> {
    match &header.binding {
        Some(b) if b.name != relative => Err(format::FormatError::WrongName {
            stored: b.name.clone(),
        }),
        _ => Ok(()),
    }
}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Key relative to the repository root.
    pub key: String,
    /// Stored size.
    pub size: u64,
    /// When the store last wrote it.
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

/// Turns a storage failure of `op` on `key` into the library's error.
fn storage_error(
    op: &'static str,
    key: &impl std::fmt::Display,
) -> impl FnOnce(StorageError) -> Error {
    let key = key.to_string();
    move |source| Error::Storage { op, key, source }
}

#[cfg(test)]
mod tests;
