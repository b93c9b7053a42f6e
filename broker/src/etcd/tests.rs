//! Tests of the etcd client against a real etcd.

use super::*;
use std::time::Duration;

use super::kv::PAGE;
use crate::secrets::Secret;
use crate::test_etcd::etcd;

fn client() -> EtcdClient {
    etcd().client()
}

#[test]
fn prefix_end_increments_the_last_byte() {
    assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
    assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
}

#[tokio::test]
async fn put_get_delete_and_prefix_pagination() {
    let c = client();
    let p = etcd().fresh_prefix();
    assert_eq!(c.get(format!("{p}/x").as_bytes()).await.unwrap(), None);
    c.put(format!("{p}/x").as_bytes(), b"1").await.unwrap();
    let kv = c.get(format!("{p}/x").as_bytes()).await.unwrap().unwrap();
    assert_eq!(kv.value, b"1");
    assert_eq!(kv.version, 1);
    assert!(kv.mod_revision > 0);
    // More keys than one page: get_prefix must follow `more`.
    for i in 0..(PAGE as usize + 20) {
        c.put(format!("{p}/many/{i:04}").as_bytes(), b"v")
            .await
            .unwrap();
    }
    let all = c.get_prefix(format!("{p}/many/").as_bytes()).await.unwrap();
    assert_eq!(all.len(), PAGE as usize + 20);
    assert!(all.windows(2).all(|w| w[0].key < w[1].key));
    let some = c
        .get_prefix_limit(format!("{p}/many/").as_bytes(), 7)
        .await
        .unwrap();
    assert_eq!(some.len(), 7);
    assert!(c.delete(format!("{p}/x").as_bytes()).await.unwrap());
    assert!(!c.delete(format!("{p}/x").as_bytes()).await.unwrap());
    assert_eq!(
        c.delete_prefix(format!("{p}/many/").as_bytes())
            .await
            .unwrap(),
        PAGE + 20
    );
    let lease = c.grant_lease(30).await.unwrap();
    assert_ne!(lease, 0);
    c.put_with_lease(format!("{p}/leased").as_bytes(), b"l", lease)
        .await
        .unwrap();
    let kv = c
        .get(format!("{p}/leased").as_bytes())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kv.lease, lease);
}

#[tokio::test]
async fn create_cas_and_delete_if_revision() {
    let c = client();
    let key = format!("{}/k", etcd().fresh_prefix());
    let k = key.as_bytes();
    let CreateOutcome::Created(rev) = c.create(k, b"a").await.unwrap() else {
        panic!("not created")
    };
    match c.create(k, b"b").await.unwrap() {
        CreateOutcome::Exists(kv) => {
            assert_eq!(kv.value, b"a");
            assert_eq!(kv.mod_revision, rev);
        }
        other => panic!("{other:?}"),
    }
    let CasOutcome::Swapped(rev2) = c.compare_and_swap(k, b"c", rev).await.unwrap() else {
        panic!("not swapped")
    };
    match c.compare_and_swap(k, b"d", rev).await.unwrap() {
        CasOutcome::Conflict(Some(kv)) => assert_eq!(kv.value, b"c"),
        other => panic!("{other:?}"),
    }
    assert!(!c.delete_if_revision(k, rev).await.unwrap());
    assert!(c.delete_if_revision(k, rev2).await.unwrap());
    assert_eq!(c.get(k).await.unwrap(), None);
    // CAS with 0 = create-if-absent.
    assert!(matches!(
        c.compare_and_swap(k, b"e", 0).await.unwrap(),
        CasOutcome::Swapped(_)
    ));
}

#[tokio::test]
async fn concurrent_creates_of_one_key_have_one_winner() {
    let c = client();
    let key = format!("{}/port/30000", etcd().fresh_prefix());
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let c = c.clone();
            let key = key.clone();
            tokio::spawn(async move {
                matches!(
                    c.create(key.as_bytes(), format!("instance-{i}").as_bytes())
                        .await
                        .unwrap(),
                    CreateOutcome::Created(_)
                )
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += t.await.unwrap() as usize;
    }
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn authentication_is_required_limited_and_renewed() {
    let p = etcd().fresh_prefix();
    let key = format!("{p}/k");
    let c = client();
    c.put(key.as_bytes(), b"v").await.unwrap();
    // A client certificate alone (no user) is not enough, nor a wrong password.
    let mut anonymous = etcd().options();
    anonymous.credentials = None;
    let e = EtcdClient::with_options(&[etcd().endpoint()], anonymous)
        .unwrap()
        .get(key.as_bytes())
        .await
        .unwrap_err();
    assert!(matches!(e, EtcdError::Rejected { .. }), "{e:?}");
    let mut wrong = etcd().options();
    wrong.credentials = Some(("broker".into(), Secret::new("not-the-password")));
    let e = EtcdClient::with_options(&[etcd().endpoint()], wrong)
        .unwrap()
        .get(key.as_bytes())
        .await
        .unwrap_err();
    assert!(matches!(e, EtcdError::Rejected { .. }), "{e:?}");
    assert!(!e.to_string().contains("not-the-password"), "{e}");
    // The broker's role reaches its prefixes only.
    let e = c.get(b"/elsewhere/k").await.unwrap_err();
    assert!(
        matches!(e, EtcdError::Rejected { ref message, .. } if message.contains("permission denied")),
        "{e:?}"
    );
    // A token that is no longer valid (expired, or etcd restarted) is replaced.
    for t in c.inner.tokens.lock().unwrap().iter_mut() {
        *t = Some(Secret::new("expired.token.1234"));
    }
    assert_eq!(c.get(key.as_bytes()).await.unwrap().unwrap().value, b"v");
    // Nothing of the token or the password in Debug.
    let dbg = format!("{c:?} {:?}", etcd().options());
    assert!(!dbg.contains(etcd().broker_password.expose()), "{dbg}");
}

#[tokio::test]
async fn failover_skips_a_dead_endpoint_and_errors_are_classified() {
    // A port nobody listens on: connection refused, never sent, so failover is safe.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let c = EtcdClient::with_options(&[dead.clone(), etcd().endpoint()], etcd().options()).unwrap();
    let key = format!("{}/f", etcd().fresh_prefix());
    // A transaction with comparisons is failed over too, as the first attempt was not sent.
    assert!(matches!(
        c.create(key.as_bytes(), b"1").await.unwrap(),
        CreateOutcome::Created(_)
    ));
    assert_eq!(c.get(key.as_bytes()).await.unwrap().unwrap().value, b"1");

    let only_dead = EtcdClient::with_options(&[dead], etcd().options()).unwrap();
    let e = only_dead.get(b"x").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(matches!(e, EtcdError::Connect { .. }), "{e:?}");

    // An empty key is refused by etcd: permanent.
    let e = client().get(b"").await.unwrap_err();
    assert!(!e.is_transient(), "{e:?}");
    assert!(
        matches!(e, EtcdError::Rejected { status: 400, .. }),
        "{e:?}"
    );

    assert!(matches!(
        EtcdClient::new(&[], Duration::from_secs(1)),
        Err(EtcdError::NoEndpoints)
    ));
    assert!(matches!(
        EtcdClient::new(&["ftp://x".into()], Duration::from_secs(1)),
        Err(EtcdError::InvalidEndpoint { .. })
    ));
}
