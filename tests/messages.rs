//! Configuration and messages, through the real binary: credentials typed into a repository
//! URL are never echoed (at any log level), a URL with no repository behind it is a
//! configuration error (status 6) for every command that reads one, and file URLs must
//! name an absolute path.

use testkit as common;

use std::fs;
use std::process::Output;

use common::*;

/// An access key ID and a secret, as an operator might paste them into a URL.
const KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET: &str = "SuperSecret123";

/// Panics if stderr shows the key ID (in any case: URL schemes and hosts are lower-cased)
/// or the secret.
#[track_caller]
fn assert_no_credentials(what: &str, out: &Output) {
    let err = stderr(out);
    assert!(
        !err.to_lowercase().contains(&KEY_ID.to_lowercase()) && !err.contains(SECRET),
        "{what}: a credential leaked:\n{err}"
    );
}

/// Every command that takes a repository, as (arguments, the status it exits with when the
/// URL cannot be used: 6, wal-fetch's 206).
fn commands(scratch: &TestDir) -> Vec<(Vec<String>, i32)> {
    let seg = scratch.join("000000010000000000000001");
    fs::write(&seg, b"not really WAL").unwrap();
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    vec![
        (s(&["wal-push", seg.to_str().unwrap()]), 6),
        (
            s(&[
                "wal-fetch",
                "000000010000000000000001",
                scratch.join("RECOVERYXLOG").to_str().unwrap(),
            ]),
            206,
        ),
        (s(&["wal-list"]), 6),
        (s(&["backup-list"]), 6),
        (s(&["status", "--pg-conn", "host=127.0.0.1 port=1"]), 6),
        (s(&["repo-info"]), 6),
        (s(&["wal-verify"]), 6),
    ]
}

#[test]
fn credentials_in_a_repository_url_are_never_echoed() {
    let scratch = TestDir::new("walarchive-msg-");
    let urls = [
        format!("s3://{KEY_ID}:{SECRET}@bucket/x"),
        format!("s3://{KEY_ID}@bucket/x"),
        format!("s3:{KEY_ID}:{SECRET}@bucket/x"),
        format!("{KEY_ID}:{SECRET}@bucket"),
        format!("s3://{KEY_ID}:{SECRET} @bucket/x"),
        format!("s3://bucket/x?X-Amz-Credential={KEY_ID}&X-Amz-Signature={SECRET}"),
        format!("az://container/x#{SECRET}"),
        format!("ftp://{KEY_ID}:{SECRET}@host/x"),
    ];
    for url in &urls {
        for (args, status) in commands(&scratch) {
            let mut a = vec!["-vv", "--repo", url.as_str()];
            a.extend(args.iter().map(String::as_str));
            let out = run_walarchive(&a, &[]);
            let what = format!("{url} {args:?}");
            assert_code(&out, status);
            assert_no_credentials(&what, &out);
            let line = error_line(&out);
            assert!(line.contains("<redacted>"), "{what}: {line}");
        }
    }
    // The same URL from a configuration file.
    let config = scratch.join("walarchive.toml");
    fs::write(&config, format!("repo = \"{}\"\n", urls[0])).unwrap();
    let out = run_walarchive(
        &["-vv", "--config", config.to_str().unwrap(), "wal-list"],
        &[],
    );
    assert_code(&out, 6);
    assert_no_credentials("config file", &out);
    let line = error_line(&out);
    assert!(
        line.contains("invalid repository URL") && line.contains("<redacted>"),
        "{line}"
    );

    // An endpoint with user info that cannot be reached: the storage errors, retried and
    // logged at every level, do not show its credentials either (nor those of the
    // environment).
    let env = vec![
        (
            "AWS_ENDPOINT".to_string(),
            format!("http://{KEY_ID}:{SECRET}@127.0.0.1:{}", free_port()),
        ),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), KEY_ID.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), SECRET.into()),
        ("WALARCHIVE_RETRIES".into(), "2".into()),
    ];
    for args in [vec!["wal-list"], vec!["backup-list"]] {
        let mut a = vec!["-vv", "--repo", "s3://bucket/x"];
        a.extend(args);
        let out = run_walarchive(&a, &env);
        assert_code(&out, 7);
        assert_no_credentials("an endpoint with user info", &out);
        assert!(stderr(&out).contains("<redacted>"), "{}", stderr(&out));
    }
}

/// Every command that reads a repository, on a URL where there is none.
fn read_commands(scratch: &TestDir) -> Vec<Vec<String>> {
    let dest = scratch.join("restored");
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    vec![
        s(&["wal-list"]),
        s(&["wal-list", "--json"]),
        s(&["backup-list", "--detail"]),
        s(&[
            "status",
            "--pg-conn",
            "host=127.0.0.1 port=1",
            "--prometheus",
        ]),
        s(&["repo-info"]),
        s(&["wal-verify"]),
        s(&["verify", "backup", "LATEST"]),
        s(&["backup-mark", "base_20260101T000000Z"]),
        s(&["delete", "retain", "1"]),
        s(&["delete", "everything", "--confirm"]),
        s(&["backup-fetch", dest.to_str().unwrap(), "LATEST"]),
    ]
}

#[test]
fn read_commands_on_a_url_without_a_repository_exit_6() {
    let scratch = TestDir::new("walarchive-msg-");
    let file_url = format!("file://{}/nothing-here", scratch.path().display());
    let s3_url = format!("s3://{}/nothing-here", s3().fresh_bucket());
    for (url, env) in [(file_url, vec![]), (s3_url, s3().env())] {
        for args in read_commands(&scratch) {
            let mut a = vec!["--repo", url.as_str()];
            a.extend(args.iter().map(String::as_str));
            let out = run_walarchive(&a, &env);
            let what = format!("{url} {args:?}");
            assert_code(&out, 6);
            assert_eq!(stdout(&out), "", "{what}: printed a result");
            let line = error_line(&out);
            assert!(
                line.contains(&format!("no walarchive repository at {url}")),
                "{what}: {line}"
            );
        }
        assert!(!scratch.join("restored").exists(), "{url}: wrote a restore");
    }
    assert!(!scratch.join("nothing-here").exists());
}

/// A prefix that holds walarchive objects but lost its descriptor is not "no repository":
/// every reader (wal-fetch too, with 206) says the descriptor is missing and names
/// `repo-repair`; `repo-repair` on an empty prefix has nothing to repair (6).
#[test]
fn read_commands_on_a_repository_without_its_descriptor_name_repo_repair() {
    let scratch = TestDir::new("walarchive-msg-");
    let repo = scratch.join("repo");
    let object = repo.join("wal/history/00000002.history");
    fs::create_dir_all(object.parent().unwrap()).unwrap();
    fs::write(&object, b"an object whose descriptor was deleted").unwrap();
    let url = format!("file://{}", repo.display());
    let mut commands = read_commands(&scratch);
    let wal = scratch.join("pg_wal");
    fs::create_dir_all(&wal).unwrap();
    commands.push(
        [
            "wal-fetch",
            "00000003.history",
            wal.join("RECOVERYXLOG").to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec(),
    );
    for args in commands {
        let mut a = vec!["--repo", url.as_str()];
        a.extend(args.iter().map(String::as_str));
        let out = run_walarchive(&a, &[]);
        let what = format!("{args:?}");
        assert_code(&out, if args[0] == "wal-fetch" { 206 } else { 6 });
        assert_eq!(stdout(&out), "", "{what}: printed a result");
        let line = error_line(&out);
        assert!(
            line.contains(&format!(
                "{url} holds walarchive objects (wal/history/00000002.history, ...) but no descriptor"
            )) && line.contains(&format!("walarchive --repo {url} repo-repair")),
            "{what}: {line}"
        );
    }
    assert!(!scratch.join("restored").exists(), "wrote a restore");
    assert!(!repo.join("walarchive.repo").exists());

    let empty = format!("file://{}", scratch.join("empty").display());
    for extra in [vec![], vec!["--confirm"]] {
        let mut a = vec!["--repo", empty.as_str(), "repo-repair"];
        a.extend(extra);
        let out = run_walarchive(&a, &[]);
        assert_code(&out, 6);
        assert_eq!(stdout(&out), "");
        assert_eq!(
            error_line(&out),
            format!("walarchive repo-repair: error: nothing to repair: no walarchive objects at {empty}")
        );
    }
    assert!(!scratch.join("empty").exists());
}

#[test]
fn file_urls_must_name_an_absolute_path() {
    let scratch = TestDir::new("walarchive-msg-");
    let seg = scratch.join("000000010000000000000001");
    fs::write(&seg, b"not really WAL").unwrap();
    // A name no one else uses: the parser would have made it /<name>/repo.
    let name = format!("walarchive-relative-{}", std::process::id());
    for url in [
        format!("file:{name}/repo"),
        format!("file:./{name}/repo"),
        format!("FILE:{name}"),
    ] {
        for args in [
            vec!["wal-push", seg.to_str().unwrap()],
            vec!["wal-list"],
            vec!["backup-list"],
        ] {
            let mut a = vec!["--repo", url.as_str()];
            a.extend(args.iter().copied());
            let out = walarchive_cmd()
                .args(&a)
                .current_dir(scratch.path())
                .output()
                .unwrap();
            assert_code(&out, 6);
            let line = error_line(&out);
            assert!(
                line.contains("absolute path") && line.contains(&url),
                "{url} {args:?}: {line}"
            );
        }
        assert!(!std::path::Path::new("/").join(&name).exists(), "{url}");
        assert!(!scratch.join(&name).exists(), "{url}");
    }
}

#[test]
fn unknown_configuration_keys_are_errors_naming_the_key() {
    let scratch = TestDir::new("walarchive-msg-");
    let repo = format!("file://{}/repo", scratch.path().display());
    let cases = [
        (
            // A typo that used to send signed requests to AWS instead of the endpoint.
            format!(
                "repo = \"{repo}\"\n[storage]\naws_region = \"us-east-1\"\n\
                 aws_endpont = \"http://127.0.0.1:1\"\naws_secret_access_key = \"{SECRET}\"\n"
            ),
            vec![
                "line 4",
                "unknown key \"aws_endpont\" in [storage]",
                "did you mean \"aws_endpoint\"?",
            ],
        ),
        (
            format!("repo = \"{repo}\"\n[storage]\nAWS_SECRET_ACCESS_KEY = \"{SECRET}\"\n"),
            vec!["line 3", "did you mean \"aws_secret_access_key\"?"],
        ),
        (
            format!("repo = \"{repo}\"\n[storage]\nregion = \"eu-west-1\"\n"),
            vec![
                "unknown key \"region\" in [storage]",
                "aws_*, azure_*, google_*",
            ],
        ),
        (
            format!("repo = \"{repo}\"\ncompresion = \"lz4\"\n"),
            vec!["line 2", "unknown field `compresion`", "`compression`"],
        ),
        (
            format!("repo = \"{repo}\"\n[retry]\nattempt = 3\n"),
            vec!["line 3", "unknown field `attempt`", "`attempts`"],
        ),
        (
            format!("repo = \"{repo}\"\n[strage]\naws_region = \"x\"\n"),
            vec!["unknown field `strage`", "`storage`"],
        ),
    ];
    let config = scratch.join("walarchive.toml");
    for (text, wanted) in cases {
        fs::write(&config, &text).unwrap();
        for args in [vec!["wal-list"], vec!["-vv", "backup-list"]] {
            let mut a = vec!["--config", config.to_str().unwrap()];
            a.extend(args.iter().copied());
            let out = run_walarchive(&a, &[]);
            assert_code(&out, 6);
            let line = error_line(&out);
            for w in &wanted {
                assert!(line.contains(w), "{text}: {w:?} not in: {line}");
            }
            assert!(line.contains(config.to_str().unwrap()), "{line}");
            assert!(!stderr(&out).contains(SECRET), "{}", stderr(&out));
        }
    }
}

/// A `[storage]` key of another backend than the URL's (an Azure account with an s3:// URL)
/// would be ignored: refused with 6, naming the key, both backends, and no secret.
#[test]
fn configuration_keys_of_another_backend_are_errors() {
    let scratch = TestDir::new("walarchive-msg-");
    let config = scratch.join("walarchive.toml");
    let file = format!("file://{}/repo", scratch.path().display());
    let cases = [
        (
            format!(
                "repo = \"s3://bucket/x\"\n[storage]\naws_region = \"us-east-1\"\n\
                 azure_storage_account_name = \"{SECRET}\"\n"
            ),
            "[storage] key \"azure_storage_account_name\" is for the Azure (az://) backend, but the repository is S3 (s3://): remove it or fix the URL",
        ),
        (
            format!("repo = \"{file}\"\n[storage]\naws_secret_access_key = \"{SECRET}\"\n"),
            "[storage] key \"aws_secret_access_key\" is for the S3 (s3://) backend, but the repository is local directory (file://)",
        ),
    ];
    for (text, wanted) in cases {
        fs::write(&config, &text).unwrap();
        let out = run_walarchive(&["--config", config.to_str().unwrap(), "wal-list"], &[]);
        assert_code(&out, 6);
        let line = error_line(&out);
        assert!(line.contains(wanted), "{text}: {line}");
        assert!(!stderr(&out).contains(SECRET), "{}", stderr(&out));
    }
    assert!(!scratch.join("repo").exists());
}
