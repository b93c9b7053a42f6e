//! Unit tests of [`super`].

use super::*;
use object_store::memory::InMemory;

/// A repository in memory, taking the descriptor of cluster 1 as its own without one
/// stored (objects are bound to it).
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

/// A repository on `inner` behind fault plan `plan`.
fn unreliable_repo(inner: Arc<InMemory>, plan: &str, policy: RetryPolicy) -> Repository {
    let store = crate::storage::unreliable::Unreliable::from_arc(inner, plan.parse().unwrap());
    let r = Repository::with_store(
        Arc::new(store),
        Path::from("p"),
        Backend::Local,
        "memory://test",
        policy,
        Compression::default(),
    );
    r.assume_descriptor_for_tests(descriptor("1"));
    r
}

/// A store refusing create-only puts (501, as Swift's S3 API does) whose first reads
/// after a put answer 404 (an object not visible yet): the put waits for the object to
/// show instead of reporting it missing.
#[tokio::test]
async fn a_put_waits_for_its_object_to_show_on_stores_without_create_only_puts() {
    let plan = "op=put fault=501 first=1; op=get fault=404 first=2";
    let repo = unreliable_repo(Arc::new(InMemory::new()), plan, RetryPolicy::default());
    let outcome = repo
        .put_new("wal/x", b"content", Compression::default())
        .await
        .expect("stored once visible");
    assert!(matches!(outcome, PutOutcome::Stored { .. }), "{outcome:?}");
    let (_, raw) = repo.get_verified("wal/x").await.unwrap();
    assert_eq!(raw, b"content");
}

/// A re-push finds the object with a HEAD, then the store answers its GETs with 404 for
/// a while (Swift's S3 API under load): the comparison waits for the object within the
/// retry bound, and a 404 that persists is a storage error, never "not in the
/// repository".
#[tokio::test]
async fn a_comparison_waits_for_an_object_the_store_said_exists() {
    let inner = Arc::new(InMemory::new());
    let repo_with = |plan: &str, policy| unreliable_repo(inner.clone(), plan, policy);
    let clean = repo_with("", RetryPolicy::default());
    clean
        .put_new("wal/x", b"content", Compression::Lz4)
        .await
        .unwrap();

    let flaky = repo_with("op=get fault=404 first=2", RetryPolicy::default());
    let outcome = flaky
        .put_new("wal/x", b"content", Compression::Zstd(1))
        .await;
    assert_eq!(outcome.unwrap(), PutOutcome::AlreadyStored);
    let flaky = repo_with("op=get fault=404 first=2", RetryPolicy::default());
    let e = flaky
        .put_new("wal/x", b"other", Compression::Lz4)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e}");

    let quick = RetryPolicy {
        max_attempts: 3,
        base_delay: std::time::Duration::from_millis(1),
        max_delay: std::time::Duration::from_millis(2),
        ..RetryPolicy::default()
    };
    let broken = repo_with("op=get fault=404", quick);
    let e = broken
        .put_new("wal/x", b"content", Compression::Lz4)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Storage { .. }), "{e:?}");
    assert!(e.to_string().contains("does not return it"), "{e}");
}

fn descriptor(sysid: &str) -> Descriptor {
    Descriptor {
        format_version: REPOSITORY_FORMAT,
        system_identifier: sysid.into(),
        pg_version: Some(15),
        wal_page_magic: 0xD110,
        wal_segment_size: 1 << 24,
        created_at: 0,
        created_by: "test".into(),
    }
}

#[test]
fn wal_keys() {
    let k = |n: &str| Repository::wal_key(&n.parse().unwrap());
    assert_eq!(
        k("0000000200000001000000AB"),
        "wal/00000002/00000001/0000000200000001000000AB"
    );
    assert_eq!(
        k("000000010000000000000003.partial"),
        "wal/00000001/00000000/000000010000000000000003.partial"
    );
    assert_eq!(
        k("000000010000000000000002.00000028.backup"),
        "wal/00000001/00000000/000000010000000000000002.00000028.backup"
    );
    assert_eq!(k("00000002.history"), "wal/history/00000002.history");
    assert_eq!(repo().key("wal/x").as_ref(), "some/prefix/wal/x");
}

#[tokio::test]
async fn never_overwrites() {
    let r = repo();
    assert!(matches!(
        r.put_new("a", b"one", Compression::Lz4).await.unwrap(),
        PutOutcome::Stored { .. }
    ));
    assert_eq!(
        r.put_new("a", b"one", Compression::Zstd(3)).await.unwrap(),
        PutOutcome::AlreadyStored
    );
    let e = r.put_new("a", b"two", Compression::Lz4).await.unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e}");
    assert_eq!(r.get_verified("a").await.unwrap().1, b"one");
    assert!(matches!(
        r.get_verified("b").await,
        Err(Error::NotFound { .. })
    ));
    let listed = r.list("").await.unwrap();
    assert_eq!(listed.len(), 1);
    // The header (64 bytes and the binding to "a": 42 + 1), then lz4's 4 bytes.
    assert_eq!((listed[0].key.as_str(), listed[0].size), ("a", 64 + 43 + 4));
}

/// WAL archived as version 1 (SHA-256) and pushed again as version 3 (BLAKE3), or the
/// other way round: compared by content, so the same content is already stored and
/// other content is a conflict, named with digests of one kind.
#[tokio::test]
async fn content_digests_of_either_hash_compare_by_content() {
    use format::DigestKind;
    let r = repo();
    let v1 = |raw: &[u8]| format::encode_as(raw, Compression::Lz4, DigestKind::Sha256, None);
    let v3 = |raw: &[u8]| format::encode_as(raw, Compression::Zstd(1), DigestKind::Blake3, None);
    r.put_encoded("old", v1(b"segment")).await.unwrap();
    r.put_encoded("new", v3(b"segment")).await.unwrap();
    assert_eq!(
        r.put_encoded("old", v3(b"segment")).await.unwrap(),
        PutOutcome::AlreadyStored
    );
    assert_eq!(
        r.put_encoded("new", v1(b"segment")).await.unwrap(),
        PutOutcome::AlreadyStored
    );
    let e = r.put_encoded("old", v3(b"other")).await.unwrap_err();
    let want = format!(
        "(stored blake3 {}, new blake3 {})",
        format::Digest::blake3(b"segment"),
        format::Digest::blake3(b"other")
    );
    assert!(e.to_string().contains(&want), "{e}");
    let e = r.put_encoded("new", v1(b"other")).await.unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e}");
    assert!(e.to_string().contains("(stored sha256 "), "{e}");
    // Body digests (backup parts) compare the object: the same content under another
    // version is not taken for it.
    let part =
        |raw: &[u8]| format::encode_as(raw, Compression::Lz4, DigestKind::Sha256OfBody, None);
    r.put_encoded("part", part(b"files")).await.unwrap();
    assert_eq!(
        r.put_encoded("part", part(b"files")).await.unwrap(),
        PutOutcome::AlreadyStored
    );
    r.put_encoded("v1", v1(b"files")).await.unwrap();
    let e = r.put_encoded("v1", part(b"files")).await.unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e}");
    assert_eq!(r.get_verified("old").await.unwrap().1, b"segment");
}

/// Fails its first `failures` requests with a transient (connection-level) error, then
/// behaves: proves that the repository's calls go through the retry helper.
#[derive(Debug)]
struct Flaky {
    inner: InMemory,
    failures: std::sync::atomic::AtomicU32,
}

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Flaky")
    }
}

impl Flaky {
    fn fail(&self) -> object_store::Result<()> {
        use std::sync::atomic::Ordering;
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            let io = std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset by peer",
            );
            return Err(object_store::Error::Generic {
                store: "Flaky",
                source: Box::new(io),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectStore for Flaky {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.fail()?;
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.fail()?;
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.fail()?;
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn transient_failures_are_retried_within_the_bound() {
    let quick = RetryPolicy {
        base_delay: std::time::Duration::from_millis(1),
        ..RetryPolicy::default()
    };
    let flaky = |n: u32| {
        let r = Repository::with_store(
            Arc::new(Flaky {
                inner: InMemory::new(),
                failures: n.into(),
            }),
            Path::from("p"),
            Backend::Local,
            "flaky://",
            RetryPolicy {
                max_attempts: 3,
                ..quick
            },
            Compression::default(),
        );
        r.assume_descriptor_for_tests(descriptor("1"));
        r
    };
    // The first call fails twice, then succeeds on its third and last attempt.
    let r = flaky(2);
    assert!(matches!(
        r.put_new("k", b"data", Compression::Lz4).await.unwrap(),
        PutOutcome::Stored { .. }
    ));
    assert_eq!(r.get_verified("k").await.unwrap().1, b"data");
    // One failure more than the bound: a clear "gave up" storage error.
    let r = flaky(3);
    let e = r.get_verified("k").await.unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Storage {
                source: StorageError::GaveUp { attempts: 3, .. },
                ..
            }
        ),
        "{e}"
    );
}

/// Every read refuses a bound object under another key or of another cluster, re-push
/// comparison included, naming both; objects written before binding stay readable.
#[tokio::test]
async fn reads_refuse_objects_under_another_name_or_of_another_cluster() {
    use format::{Binding, DigestKind};
    let store = Arc::new(InMemory::new());
    let r = Repository::with_store(
        store.clone(),
        Path::from("p"),
        Backend::Local,
        "memory://test",
        RetryPolicy::default(),
        Compression::Lz4,
    );
    r.ensure_descriptor(&descriptor("1"), "t").await.unwrap();
    let (k57, k58) = (
        "wal/00000001/00000000/000000010000000000000057",
        "wal/00000001/00000000/000000010000000000000058",
    );
    r.put_new(k57, b"fifty-seven", Compression::Lz4)
        .await
        .unwrap();
    assert_eq!(r.bound_system_identifier(k57).await.unwrap(), Some(1));
    // A copy of 57's object at 58's key.
    let bytes = store.get(&r.key(k57)).await.unwrap().bytes().await.unwrap();
    store.put(&r.key(k58), bytes.into()).await.unwrap();
    let e = r.get_verified(k58).await.unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("p/wal/00000001/00000000/000000010000000000000058 is corrupt")
            && text.contains("it is the object of wal/00000001/00000000/000000010000000000000057"),
        "{text}"
    );
    assert!(r.bound_system_identifier(k58).await.is_err());
    // Pushing 58 with 57's content again: the stored object is refused, not "identical".
    let e = r
        .put_new(k58, b"fifty-seven", Compression::Lz4)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    // put_encoded never stores an object bound to another key.
    let other = format::encode(b"x", Compression::None, Some(&Binding::new(1, k57)));
    r.delete(k58).await.unwrap();
    assert!(matches!(
        r.put_encoded(k58, other).await,
        Err(Error::Corrupt { .. })
    ));
    // Another cluster's object under the right key.
    let foreign = format::encode(b"x", Compression::None, Some(&Binding::new(2, k58)));
    store.put(&r.key(k58), foreign.bytes.into()).await.unwrap();
    let e = r.get_verified(k58).await.unwrap_err();
    assert!(
        e.to_string().contains(
            "belongs to the repository of system identifier 2, but this repository's is 1"
        ),
        "{e}"
    );
    // ...which a repository of that cluster, and repo-repair, read.
    assert_eq!(r.get_without_descriptor(k58).await.unwrap(), b"x");
    assert_eq!(r.bound_system_identifier(k58).await.unwrap(), Some(2));
    // Written before binding: read as before.
    let old = format::encode_as(b"old", Compression::None, DigestKind::Blake3, None);
    store.put(&r.key(k58), old.bytes.into()).await.unwrap();
    assert_eq!(r.get_verified(k58).await.unwrap().1, b"old");
    assert_eq!(r.bound_system_identifier(k58).await.unwrap(), None);
    // A descriptor bound to another system identifier than it states is corrupt.
    let d = serde_json::to_vec(&descriptor("1")).unwrap();
    let wrong = format::encode(
        &d,
        Compression::None,
        Some(&Binding::new(9, DESCRIPTOR_KEY)),
    );
    store
        .put(&r.key(DESCRIPTOR_KEY), wrong.bytes.into())
        .await
        .unwrap();
    assert!(matches!(r.descriptor().await, Err(Error::Corrupt { .. })));
}
