//! Rendering a rule list as upstream does: the `iptables-restore --noflush` payload and the
//! individual cleanup commands. Pure.

use std::collections::HashSet;

use crate::plan::{Rule, Table, chain};

/// The lines of the restore payload for one family (empty when there are no rules).
///
/// Tables in sorted order; per table `* table`, then `-N` for each non-builtin chain in order of
/// its first rule, then `-N` for jump targets not yet created, then the rules, then `COMMIT`.
pub fn payload_lines(rules: &[Rule]) -> Vec<String> {
    let mut lines = Vec::new();
    for table in Table::ALL {
        let rules: Vec<&Rule> = rules.iter().filter(|r| r.table == table).collect();
        if rules.is_empty() {
            continue;
        }
        lines.push(format!("* {table}"));
        let mut created = HashSet::new();
        for r in &rules {
            if !chain::is_builtin(&r.chain) && created.insert(r.chain.as_str()) {
                lines.push(format!("-N {}", r.chain));
            }
        }
        for r in &rules {
            if let Some(target) = r.jump_target()
                && !chain::is_builtin(target)
                && is_chain_name(target)
                && created.insert(target)
            {
                lines.push(format!("-N {target}"));
            }
        }
        lines.extend(rules.iter().map(|r| r.words().join(" ")));
        lines.push("COMMIT".to_string());
    }
    lines
}

/// Jump targets that are chains of ours rather than extension targets (REDIRECT, MARK, CT…).
fn is_chain_name(target: &str) -> bool {
    target.starts_with("ISTIO_")
}

/// The payload as fed on stdin.
pub fn payload(rules: &[Rule]) -> String {
    let mut s = payload_lines(rules).join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// The arguments (after the binary name) of the commands that remove what `rules` install:
/// the rules in reverse, except those inside our own chains that don't jump to one of ours
/// (flushing the chain removes them), then `-F` and `-X` of each chain we created.
pub fn cleanup_commands(rules: &[Rule]) -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    for r in rules.iter().rev() {
        let ours = r.chain.starts_with("ISTIO_");
        let jumps_to_ours = r.jump_target().is_some_and(|t| t.starts_with("ISTIO_"));
        if ours && !jumps_to_ours {
            continue;
        }
        let mut args = vec![
            "-t".to_string(),
            r.table.to_string(),
            "-D".to_string(),
            r.chain.clone(),
        ];
        args.extend(r.spec.iter().cloned());
        cmds.push(args);
    }
    let mut seen = HashSet::new();
    for r in rules.iter().rev() {
        if !chain::is_builtin(&r.chain) && seen.insert((r.table, r.chain.as_str())) {
            for op in ["-F", "-X"] {
                cmds.push(vec![
                    "-t".into(),
                    r.table.to_string(),
                    op.into(),
                    r.chain.clone(),
                ]);
            }
        }
    }
    cmds
}
