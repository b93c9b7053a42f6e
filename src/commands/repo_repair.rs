//! `walarchive repo-repair`.

use anyhow::{Context, Result};
use walarchive::Repository;

use crate::exit;

pub(crate) async fn repo_repair(
    repo: &Repository,
    pgdata: Option<&std::path::Path>,
    confirm: bool,
    json: bool,
) -> Result<u8> {
    let identity = match pgdata {
        Some(dir) => super::wal_push::push_identity(Some(dir), None, dir)?,
        None => None,
    };
    let r = walarchive::repair::repair(repo, identity.as_ref(), confirm).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).context("cannot print JSON")?
        );
        return Ok(exit::OK);
    }
    if let Some(d) = &r.existing {
        println!(
            "{} has a descriptor (system identifier {}): nothing to repair",
            repo.url(),
            d.system_identifier
        );
        return Ok(exit::OK);
    }
    for e in &r.evidence {
        let mut said = Vec::new();
        if let Some(s) = &e.system_identifier {
            said.push(format!("system identifier {s}"));
        }
        if let Some(s) = e.wal_segment_size {
            said.push(format!("WAL segment size {s}"));
        }
        if let Some(m) = e.wal_page_magic {
            said.push(format!("WAL page magic 0x{m:04X}"));
        }
        println!("{}: {}", e.source, said.join(", "));
    }
    let d = r.rebuilt.as_ref().expect("rebuilt when there was none");
    let what = format!(
        "descriptor for system identifier {}, WAL segment size {}, WAL page magic 0x{:04X} (from {} objects)",
        d.system_identifier, d.wal_segment_size, d.wal_page_magic, r.objects
    );
    if r.written {
        println!("wrote the {what}");
    } else if confirm {
        println!(
            "a descriptor was written meanwhile, describing the same cluster: nothing written"
        );
    } else {
        println!("would write the {what}");
        println!("dry run: nothing was written; run again with --confirm to write it");
    }
    Ok(exit::OK)
}
