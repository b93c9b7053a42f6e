//! Steps 1 and 2: the credentials of a store, checked with the four operations the broker
//! and the nodes need (put, get, list, delete) on one object of the self-test's own.
//!
//! Why the object's name starts with `.`: no instance's repository does (names are
//! `[A-Za-z0-9_-]`), so the probe can never touch an archive.

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt as _, PutPayload};
use walarchive::storage::{Location, StorageError};
use walarchive::RetryPolicy;

/// Puts `.walarchive-selftest-<hex>` under `loc`, reads it back, finds it in a listing and
/// deletes it (also when a step after the put failed); what went wrong, naming the operation.
pub(super) async fn probe(loc: &Location, policy: &RetryPolicy, hex: &str) -> Result<(), String> {
    let name = format!(".walarchive-selftest-{hex}");
    let key = Path::from_iter(loc.prefix.parts().chain(Path::from(name.as_str()).parts()));
    let body = Bytes::from(format!("walarchive-broker selftest {hex}\n"));
    let store = loc.store.clone();
    let err = |op: &str| {
        let n = name.clone();
        let op = op.to_string();
        move |e: StorageError| format!("{op} {n}: {e}")
    };
    walarchive::retry::retry(policy, &format!("put {name}"), || {
        let (store, key, body) = (store.clone(), key.clone(), body.clone());
        async move {
            store
                .put(&key, PutPayload::from(body))
                .await
                .map(|_| ())
                .map_err(StorageError::from)
        }
    })
    .await
    .map_err(err("put"))?;
    let checked = async {
        let got = walarchive::retry::retry(policy, &format!("get {name}"), || {
            let (store, key) = (store.clone(), key.clone());
            async move {
                let r = store.get(&key).await.map_err(StorageError::from)?;
                r.bytes().await.map_err(StorageError::from)
            }
        })
        .await
        .map_err(err("get"))?;
        if got != body {
            return Err(format!(
                "get {name}: read {} bytes that differ from the {} written",
                got.len(),
                body.len()
            ));
        }
        let parent = (loc.prefix.parts().count() > 0).then_some(&loc.prefix);
        let listed = walarchive::retry::retry(policy, "list", || {
            let store = store.clone();
            async move {
                store
                    .list_with_delimiter(parent)
                    .await
                    .map_err(StorageError::from)
            }
        })
        .await
        .map_err(err("list the directory of"))?;
        if !listed.objects.iter().any(|m| m.location == key) {
            return Err(format!(
                "list: {name} is not listed ({} objects) after a put",
                listed.objects.len()
            ));
        }
        Ok(())
    }
    .await;
    let deleted = walarchive::retry::retry(policy, &format!("delete {name}"), || {
        let (store, key) = (store.clone(), key.clone());
        async move { store.delete(&key).await.map_err(StorageError::from) }
    })
    .await
    .map_err(err("delete"));
    checked?;
    deleted?;
    match store.head(&key).await.map_err(StorageError::from) {
        Err(StorageError::NotFound) => Ok(()),
        Ok(_) => Err(format!("delete {name}: still there after a delete")),
        Err(e) => Err(format!("head {name} after its delete: {e}")),
    }
}
