//! The checks that refuse a configuration before the broker starts: required and unique
//! settings, URLs that must not carry credentials, plain HTTP off the loopback interface,
//! TLS settings that go together, and Patroni's timing. Each error names the setting.

use std::collections::HashSet;
use std::time::Duration;

use super::{BrokerConfig, ConfigError, MAX_NODES};
use crate::tls::is_loopback_host;

impl BrokerConfig {
    /// Checks the settings (before secrets are read); `origin` names the file in errors.
    pub(super) fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |setting: &str, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            setting: setting.to_string(),
            message,
        };
        if self.credentials.username.is_empty() || self.credentials.username.contains(':') {
            return Err(invalid(
                "credentials.username",
                "must be non-empty and contain no ':'".into(),
            ));
        }
        let s = &self.service;
        for (name, v) in [
            ("service.id", &s.id),
            ("service.name", &s.name),
            ("service.description", &s.description),
        ] {
            if v.trim().is_empty() {
                return Err(invalid(name, "must not be empty".into()));
            }
        }
        if s.plans.is_empty() {
            return Err(invalid(
                "service.plans",
                "at least one plan is required".into(),
            ));
        }
        let (mut ids, mut names) = (HashSet::new(), HashSet::new());
        for (i, p) in s.plans.iter().enumerate() {
            let at = |f: &str| format!("service.plans[{i}].{f}");
            if p.id.trim().is_empty() || p.name.trim().is_empty() || p.description.trim().is_empty()
            {
                return Err(invalid(
                    &at("id"),
                    "id, name and description must not be empty".into(),
                ));
            }
            if p.id == s.id {
                return Err(invalid(&at("id"), "must differ from the service id".into()));
            }
            if !ids.insert(&p.id) {
                return Err(invalid(&at("id"), format!("duplicate plan id {:?}", p.id)));
            }
            if !names.insert(&p.name) {
                return Err(invalid(
                    &at("name"),
                    format!("duplicate plan name {:?}", p.name),
                ));
            }
            if !(1..=MAX_NODES).contains(&p.node_count) {
                return Err(invalid(
                    &at("node_count"),
                    format!("must be between 1 and {MAX_NODES}"),
                ));
            }
        }
        // The value is never echoed: a mistyped one may still hold a secret.
        match url::Url::parse(&self.repository.base) {
            Err(_) => {
                return Err(invalid(
                    "repository.base",
                    "is not a URL (e.g. s3://bucket/prefix or file:///srv/archive)".into(),
                ))
            }
            // Every node's argv, environment and log would carry them, and etcd in clear.
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                return Err(invalid(
                    "repository.base",
                    "must not hold credentials (user:password@): give them in repository.env or repository.walarchive_config".into(),
                ))
            }
            Ok(u) if u.query().is_some() || u.fragment().is_some() => {
                return Err(invalid(
                    "repository.base",
                    "must not have a query string or fragment (credentials and storage options go in repository.env or repository.walarchive_config)".into(),
                ))
            }
            Ok(_) => {}
        }
        let st = &self.stats;
        if st.sample_interval.0 < Duration::from_secs(1) {
            return Err(invalid(
                "stats.sample_interval",
                "must be at least 1s".into(),
            ));
        }
        if st.concurrency == 0 {
            return Err(invalid("stats.concurrency", "must be at least 1".into()));
        }
        if st.coarse_interval.0 < st.sample_interval.0 {
            return Err(invalid(
                "stats.coarse_interval",
                "must not be shorter than stats.sample_interval".into(),
            ));
        }
        if st.coarse_retention.0 < st.full_retention.0 {
            return Err(invalid(
                "stats.coarse_retention",
                "must not be shorter than stats.full_retention".into(),
            ));
        }
        if let Some(b) = &self.state_backup {
            plain_url(&b.url).map_err(|m| invalid("state_backup.url", m))?;
            let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
            let base = self.repository.base.trim_end_matches('/');
            if same(&b.url, base) || b.url.starts_with(&format!("{base}/")) {
                return Err(invalid(
                    "state_backup.url",
                    "must not be under repository.base (a store of its own, with its own credentials)".into(),
                ));
            }
            if b.keep == 0 {
                return Err(invalid("state_backup.keep", "must be at least 1".into()));
            }
            if b.min_interval.0 < Duration::from_secs(1) {
                return Err(invalid(
                    "state_backup.min_interval",
                    "must be at least 1s".into(),
                ));
            }
        }
        let d = &self.dashboard;
        if let Some(u) = &d.url {
            match url::Url::parse(u) {
                Ok(p) if matches!(p.scheme(), "http" | "https")
                    && p.host_str().is_some()
                    && p.username().is_empty()
                    && p.password().is_none()
                    && p.query().is_none()
                    && p.fragment().is_none() => {}
                _ => {
                    return Err(invalid(
                        "dashboard.url",
                        "must be the broker's http(s):// URL as browsers reach it, without credentials, query or fragment".into(),
                    ))
                }
            }
        }
        if d.session_lifetime.0 < Duration::from_secs(60) {
            return Err(invalid(
                "dashboard.session_lifetime",
                "must be at least 1m".into(),
            ));
        }
        let r = &self.repository;
        if r.keep_deleted_minimum.0 < Duration::from_secs(1) {
            return Err(invalid(
                "repository.keep_deleted_minimum",
                "must be at least 1s".into(),
            ));
        }
        if let Some(keep) = r.keep_deleted {
            if keep.0 < r.keep_deleted_minimum.0 {
                return Err(invalid(
                    "repository.keep_deleted",
                    format!(
                        "must be at least {} (repository.keep_deleted_minimum): archives of deleted instances are deleted for good once it has passed",
                        humantime::format_duration(r.keep_deleted_minimum.0)
                    ),
                ));
            }
        }
        if self.etcd.endpoints.is_empty() {
            return Err(invalid(
                "etcd.endpoints",
                "at least one endpoint is required".into(),
            ));
        }
        for e in &self.etcd.endpoints {
            match url::Url::parse(e) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                    let host = u.host_str().unwrap_or_default();
                    if u.scheme() == "http" && !is_loopback_host(host) && !self.allow_plaintext {
                        return Err(invalid(
                            "etcd.endpoints",
                            format!("{e:?} is plain HTTP to another machine: use https:// (with etcd.ca_file), or set allow_plaintext = true"),
                        ));
                    }
                    if u.scheme() == "https" && self.etcd.ca_file.is_none() {
                        return Err(invalid(
                            "etcd.ca_file",
                            format!(
                                "{e:?} is https: set etcd.ca_file to the CA of etcd's certificate"
                            ),
                        ));
                    }
                }
                _ => {
                    return Err(invalid(
                        "etcd.endpoints",
                        format!("{e:?} is not an http(s)://HOST:PORT URL"),
                    ))
                }
            }
        }
        let https = self.etcd.endpoints.iter().any(|e| e.starts_with("https:"));
        if https && self.nodes.etcd_ca_file.is_none() {
            return Err(invalid(
                "nodes.etcd_ca_file",
                "etcd is https: set the path of etcd's CA on the cells, for Patroni".into(),
            ));
        }
        if self.nodes.etcd_cert_file.is_some() != self.nodes.etcd_key_file.is_some() {
            return Err(invalid(
                "nodes.etcd_cert_file",
                "nodes.etcd_cert_file and nodes.etcd_key_file go together".into(),
            ));
        }
        if self.etcd.username.is_none()
            && (self.etcd.password_env.is_some() || self.etcd.password_file.is_some())
        {
            return Err(invalid(
                "etcd.username",
                "a password is set but no user: set etcd.username".into(),
            ));
        }
        if self.nodes.etcd_username.is_none()
            && (self.nodes.etcd_password_env.is_some() || self.nodes.etcd_password_file.is_some())
        {
            return Err(invalid(
                "nodes.etcd_username",
                "a password is set but no user: set nodes.etcd_username".into(),
            ));
        }
        if self.etcd.cert_file.is_some() != self.etcd.key_file.is_some() {
            return Err(invalid(
                "etcd.cert_file",
                "etcd.cert_file and etcd.key_file go together".into(),
            ));
        }
        if !self.listen.ip().is_loopback() && self.tls.is_none() && !self.allow_plaintext {
            return Err(invalid(
                "listen",
                format!("{} is not a loopback address and [tls] is not configured: the platform's password would cross the network in clear; configure [tls] (cert_file, key_file, ca_file) or set allow_plaintext = true", self.listen),
            ));
        }
        let p = &self.etcd.prefix;
        if !p.starts_with('/') || p.ends_with('/') || p.len() < 2 {
            return Err(invalid(
                "etcd.prefix",
                format!("{p:?} must start with '/' and not end with '/'"),
            ));
        }
        if self.etcd.timeout.0.is_zero() {
            return Err(invalid("etcd.timeout", "must be positive".into()));
        }
        let mut cells = HashSet::new();
        for (i, c) in self.cells.iter().enumerate() {
            if c.name.is_empty() || !cells.insert(&c.name) {
                return Err(invalid(
                    &format!("cells[{i}].name"),
                    format!("empty or duplicate cell name {:?}", c.name),
                ));
            }
            let url = match url::Url::parse(&c.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
                _ => {
                    return Err(invalid(
                        &format!("cells[{i}].url"),
                        format!("{:?} is not an http(s)://HOST:PORT URL", c.url),
                    ))
                }
            };
            if url.scheme() == "https" && self.tls.is_none() {
                return Err(invalid(
                    &format!("cells[{i}].url"),
                    format!("{:?} is https: configure [tls] (the CA of the cells' certificates, and the broker's client certificate)", c.url),
                ));
            }
            if url.scheme() == "http"
                && !is_loopback_host(url.host_str().unwrap_or_default())
                && !self.allow_plaintext
            {
                return Err(invalid(
                    &format!("cells[{i}].url"),
                    format!("{:?} is plain HTTP to another machine (its token and the nodes' passwords would cross the network in clear): use https://, or set allow_plaintext = true", c.url),
                ));
            }
        }
        let r = &self.router;
        if r.host.is_empty() {
            return Err(invalid("router.host", "must not be empty".into()));
        }
        if r.port_min == 0 || r.port_min > r.port_max {
            return Err(invalid(
                "router.port_min",
                format!(
                    "need 0 < port_min <= port_max, got {}..{}",
                    r.port_min, r.port_max
                ),
            ));
        }
        if self.archive_timeout.0.is_zero() {
            return Err(invalid("archive_timeout", "must be positive".into()));
        }
        if self.worker.backoff_max.0 < Duration::from_secs(1) {
            return Err(invalid("worker.backoff_max", "must be at least 1s".into()));
        }
        if self.backups.interval.0.is_zero() {
            return Err(invalid("backups.interval", "must be positive".into()));
        }
        let n = &self.nodes;
        if n.synchronous_commit != super::SynchronousCommit::On && !n.synchronous {
            return Err(invalid(
                "nodes.synchronous_commit",
                "only applies with nodes.synchronous = true (without a synchronous standby, a commit waits for nothing)".into(),
            ));
        }
        if n.loop_wait == 0 || n.loop_wait + 2 * n.retry_timeout > n.ttl {
            return Err(invalid(
                "nodes.ttl",
                "need loop_wait > 0 and loop_wait + 2 * retry_timeout <= ttl".into(),
            ));
        }
        if !n.walarchive.is_absolute() {
            return Err(invalid(
                "nodes.walarchive",
                "must be an absolute path".into(),
            ));
        }
        if let Some(ns) = &n.patroni_namespace {
            if !ns.starts_with('/') || !ns.ends_with('/') {
                return Err(invalid(
                    "nodes.patroni_namespace",
                    format!("{ns:?} must start and end with '/'"),
                ));
            }
        }
        if self.backups.retain == 0 {
            return Err(invalid("backups.retain", "must be at least 1".into()));
        }
        for (i, u) in self.clones.cross_organization_users.iter().enumerate() {
            if u.is_empty()
                || u.len() > 255
                || u.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(invalid(
                    &format!("clones.cross_organization_users[{i}]"),
                    "must be a user GUID (1 to 255 bytes, no spaces or control characters)".into(),
                ));
            }
        }
        if self.clones.validation_budget.0 < Duration::from_secs(1) {
            return Err(invalid(
                "clones.validation_budget",
                "must be at least 1s".into(),
            ));
        }
        Ok(())
    }
}

/// Why `url` is not a plain store URL (one without credentials, query string or fragment).
/// The value is never echoed: a mistyped one may still hold a secret.
fn plain_url(url: &str) -> Result<(), String> {
    match url::Url::parse(url) {
        Err(_) => Err("is not a URL (e.g. s3://bucket/prefix or file:///srv/broker-state)".into()),
        Ok(u) if !u.username().is_empty() || u.password().is_some() => Err(
            "must not hold credentials (user:password@): give them in state_backup.walarchive_config".into(),
        ),
        Ok(u) if u.query().is_some() || u.fragment().is_some() => Err(
            "must not have a query string or fragment (credentials and storage options go in state_backup.walarchive_config)".into(),
        ),
        Ok(_) => Ok(()),
    }
}
