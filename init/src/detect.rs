//! Choosing the iptables binaries (legacy or nft) as istio-iptables 1.28+ does.
//!
//! Without `--force-iptables-binary`: legacy if it works *and already holds rules* (some other
//! component of the pod or node uses it), else nft if it works, else plain `iptables`. A binary
//! "works" if `-save` runs and a throw-away rule can be added to (and removed from) the nat table,
//! which proves the kernel has the nat table for that backend.

use thiserror::Error;

use crate::config::ForcedBinary;
use crate::exec::{Cmd, ExecError, Executor};
use crate::plan::Family;

/// The binaries of one family's iptables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iptables {
    pub bin: String,
    pub save: String,
    pub restore: String,
    pub nft: bool,
    pub version: (u32, u32, u32),
}

impl Iptables {
    /// Plain names, as the dry-run stub reports them.
    pub fn plain(family: Family) -> Iptables {
        let base = base_name(family);
        Iptables {
            bin: base.to_string(),
            save: format!("{base}-save"),
            restore: format!("{base}-restore"),
            nft: false,
            version: (0, 0, 0),
        }
    }

    /// Legacy iptables from 1.6.2 on takes the xtables lock with `--wait`; nft needs no lock.
    pub fn wants_wait(&self) -> bool {
        !self.nft && self.version >= (1, 6, 2)
    }

    /// The `--wait=30` argument for write commands, when locking applies.
    pub fn wait_args(&self) -> Vec<String> {
        if self.wants_wait() {
            vec!["--wait=30".into()]
        } else {
            Vec::new()
        }
    }
}

#[derive(Debug, Error)]
pub enum DetectError {
    #[error("no usable {family} binary found (tried {tried}); the last error: {last}")]
    NotFound {
        family: &'static str,
        tried: String,
        last: String,
    },
    #[error("{bin} cannot be used: {reason}")]
    Unusable { bin: String, reason: String },
}

fn base_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

/// Parses `iptables-save --version` ("iptables-save v1.8.9 (nf_tables)").
pub fn parse_version(stdout: &str) -> Option<((u32, u32, u32), bool)> {
    let v = stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some(((major, minor, patch), stdout.contains("nf_tables")))
}

/// Whether a `-save` output holds any rule or user chain.
///
/// Upstream counts lines (three or more). But the capability probe itself instantiates an empty
/// nat table in the legacy backend, whose `-save` output then has more than three lines, so a
/// re-run would switch to legacy while the rules live in nft. We look for real content instead.
pub fn holds_rules(save: &str) -> bool {
    save.lines()
        .any(|l| l.starts_with("-A ") || (l.starts_with(':') && l.contains(" - ")))
}

struct Probed {
    ipt: Iptables,
    has_rules: bool,
}

fn probe(exec: &mut dyn Executor, bin: &str) -> Result<Probed, String> {
    let save = format!("{bin}-save");
    let saved = exec
        .run(&Cmd::new(&save, Vec::<String>::new()))
        .map_err(|e| e.to_string())?;
    let has_rules = holds_rules(&saved.stdout);
    let (version, nft) = match exec.run(&Cmd::new(&save, ["--version"])) {
        Ok(out) if !out.stderr.contains("unrecognized option") => parse_version(&out.stdout)
            .ok_or_else(|| {
                format!(
                    "cannot read the version from `{save} --version`: {}",
                    out.stdout.trim()
                )
            })?,
        _ => ((0, 0, 0), false),
    };
    let ipt = Iptables {
        bin: bin.to_string(),
        save,
        restore: format!("{bin}-restore"),
        nft,
        version,
    };
    let mut add = vec!["-t", "nat", "-A", "INPUT", "-p", "255", "-j", "RETURN"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    add.extend(ipt.wait_args());
    match exec.run(&Cmd::new(bin, add.clone())) {
        Ok(out) if !out.stderr.contains("does not exist") => {}
        Ok(out) => return Err(out.stderr),
        Err(e) => return Err(e.to_string()),
    }
    add[2] = "-D".into();
    let _ = exec.run(&Cmd::new(bin, add));
    Ok(Probed { ipt, has_rules })
}

/// Detects the binaries for one family.
pub fn detect(
    exec: &mut dyn Executor,
    family: Family,
    forced: Option<ForcedBinary>,
) -> Result<Iptables, DetectError> {
    let base = base_name(family);
    let family_name = base;
    if let Some(forced) = forced {
        let bin = match forced {
            ForcedBinary::Legacy => format!("{base}-legacy"),
            ForcedBinary::Nft => format!("{base}-nft"),
        };
        return probe(exec, &bin)
            .map(|p| p.ipt)
            .map_err(|reason| DetectError::Unusable { bin, reason });
    }
    let mut errors = Vec::new();
    let legacy = format!("{base}-legacy");
    match probe(exec, &legacy) {
        Ok(p) if p.has_rules => return Ok(p.ipt),
        Ok(_) => errors.push(format!("{legacy}: usable but holds no rules")),
        Err(e) => errors.push(format!("{legacy}: {e}")),
    }
    let nft = format!("{base}-nft");
    match probe(exec, &nft) {
        Ok(p) => return Ok(p.ipt),
        Err(e) => errors.push(format!("{nft}: {e}")),
    }
    match probe(exec, base) {
        Ok(p) => Ok(p.ipt),
        Err(e) => Err(DetectError::NotFound {
            family: family_name,
            tried: format!("{legacy}, {nft}, {base}"),
            last: {
                errors.push(format!("{base}: {e}"));
                errors.join("; ")
            },
        }),
    }
}

/// `ExecError` when a family has no usable binary: upstream treats such commands as failed.
pub fn missing_binary(family: Family) -> ExecError {
    ExecError::Failed {
        command: base_name(family).to_string(),
        code: None,
        stderr: "called without iptables binary".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_tables_hold_no_rules() {
        let empty = "# Generated by iptables-save v1.8.9\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";
        assert!(!holds_rules(empty));
        assert!(holds_rules(&format!("{empty}-A OUTPUT -j RETURN\n")));
        assert!(holds_rules("*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n"));
    }

    #[test]
    fn reads_versions() {
        assert_eq!(
            parse_version("iptables-save v1.8.9 (nf_tables)\n"),
            Some(((1, 8, 9), true))
        );
        assert_eq!(
            parse_version("iptables-save v1.6.2\n"),
            Some(((1, 6, 2), false))
        );
        assert_eq!(parse_version("garbage"), None);
    }
}
