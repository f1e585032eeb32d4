//! Comparing what `iptables-save` shows with what a plan installs (upstream's
//! `VerifyIptablesState`). Pure: the `-C` existence checks are passed in as a function.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::plan::{Rule, Table};

/// Rules per chain per table. Chain headers are kept for our own (`ISTIO_*`) chains only; every
/// rule line is kept under its chain, builtin chains included.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    pub tables: BTreeMap<Table, BTreeMap<String, Vec<String>>>,
}

impl State {
    /// Parses `iptables-save` output or a restore payload (`*nat` and `* nat` both work).
    pub fn parse(text: &str) -> State {
        let mut state = State::default();
        let mut table: Option<Table> = None;
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                table = Table::from_name(name.trim());
                if let Some(t) = table {
                    state.tables.entry(t).or_default();
                }
                continue;
            }
            let Some(t) = table else { continue };
            let chains = state.tables.entry(t).or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some(header) if header.starts_with(':') => {
                    let name = &header[1..];
                    if name.starts_with("ISTIO") {
                        chains.entry(name.to_string()).or_default();
                    }
                }
                Some("-N") => {
                    if let Some(name) = words.next().filter(|n| n.starts_with("ISTIO")) {
                        chains.entry(name.to_string()).or_default();
                    }
                }
                Some("-A") | Some("-I") => {
                    if let Some(chain) = words.next() {
                        chains
                            .entry(chain.to_string())
                            .or_default()
                            .push(line.to_string());
                    }
                }
                _ => {}
            }
        }
        state
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Our chains present in this state, as (table, chain).
    pub fn istio_chains(&self) -> BTreeSet<(Table, String)> {
        self.tables
            .iter()
            .flat_map(|(t, chains)| {
                chains
                    .keys()
                    .filter(|c| c.starts_with("ISTIO_"))
                    .map(move |c| (*t, c.clone()))
            })
            .collect()
    }
}

/// One way the current rules differ from the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    MissingTable(Table),
    MissingChain(Table, String),
    RuleCount {
        table: Table,
        chain: String,
        expected: usize,
        found: usize,
    },
    UnexpectedChain(Table, String),
    MissingRule(Table, String),
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::MissingTable(t) => write!(f, "table {t} has none of the expected rules"),
            Drift::MissingChain(t, c) => write!(f, "chain {c} (table {t}) is missing"),
            Drift::RuleCount {
                table,
                chain,
                expected,
                found,
            } => {
                write!(
                    f,
                    "chain {chain} (table {table}) has {found} rules, expected {expected}"
                )
            }
            Drift::UnexpectedChain(t, c) => {
                write!(f, "chain {c} (table {t}) is not part of this configuration")
            }
            Drift::MissingRule(t, r) => write!(f, "rule missing in table {t}: {r}"),
        }
    }
}

/// The verification result for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Some rules exist already.
    pub residue: bool,
    /// They differ from the plan (or nothing exists and the plan is not empty).
    pub delta: bool,
    pub drift: Vec<Drift>,
}

/// Compares `current` with the rules of a plan. `exists` answers `iptables -t T -C …` for a rule.
pub fn verify(current: &State, planned: &[Rule], mut exists: impl FnMut(&Rule) -> bool) -> Verdict {
    let expected = State::parse(&crate::restore::payload(planned));
    if current.is_empty() {
        return Verdict {
            residue: false,
            delta: !planned.is_empty(),
            drift: Vec::new(),
        };
    }
    let mut drift = Vec::new();
    for (table, chains) in &expected.tables {
        let Some(have) = current.tables.get(table) else {
            drift.push(Drift::MissingTable(*table));
            continue;
        };
        for (chain, rules) in chains {
            match have.get(chain) {
                None => drift.push(Drift::MissingChain(*table, chain.clone())),
                Some(found) if chain.starts_with("ISTIO_") && found.len() != rules.len() => drift
                    .push(Drift::RuleCount {
                        table: *table,
                        chain: chain.clone(),
                        expected: rules.len(),
                        found: found.len(),
                    }),
                Some(_) => {}
            }
        }
    }
    let expected_chains = expected.istio_chains();
    for (table, chain) in current.istio_chains() {
        if !expected_chains.contains(&(table, chain.clone())) {
            drift.push(Drift::UnexpectedChain(table, chain));
        }
    }
    if drift.is_empty() {
        for rule in planned {
            if !exists(rule) {
                drift.push(Drift::MissingRule(rule.table, rule.words().join(" ")));
            }
        }
    }
    Verdict {
        residue: true,
        delta: !drift.is_empty(),
        drift,
    }
}

/// What to do, decided from both families' verdicts (upstream's `executeCommands`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Rules are in place already: nothing to do.
    Nothing,
    /// Install the plan.
    Apply,
    /// Drift found and reconcile on: guardrails, clean up, install, drop guardrails.
    Reconcile,
    /// `--cleanup-only`.
    Cleanup,
    /// Drift found, reconcile off, and our chains exist: installing would fail half-way.
    RefuseDrift,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Mode {
    pub reconcile: bool,
    pub cleanup_only: bool,
    pub force_apply: bool,
}

/// `residue`/`delta` are the global results: residue counts only for families with planned
/// rules; with no residue anywhere the state is "clean" (residue false, delta true).
pub fn decide(residue: bool, delta: bool, istio_chains_exist: bool, mode: Mode) -> Action {
    let (residue, delta) = if residue {
        (true, delta)
    } else {
        (false, true)
    };
    if mode.cleanup_only {
        Action::Cleanup
    } else if residue && delta && mode.reconcile {
        Action::Reconcile
    } else if residue && delta && istio_chains_exist {
        // Upstream applies anyway and iptables-restore fails with "Chain already exists"
        // (possibly after the IPv4 half went in). We stop before touching anything.
        Action::RefuseDrift
    } else if delta || mode.force_apply {
        Action::Apply
    } else {
        Action::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_match_upstream_table() {
        let m = Mode::default();
        assert_eq!(
            decide(false, true, false, m),
            Action::Apply,
            "clean state installs"
        );
        assert_eq!(
            decide(true, false, true, m),
            Action::Nothing,
            "same rules: no-op"
        );
        assert_eq!(decide(true, true, true, m), Action::RefuseDrift);
        assert_eq!(
            decide(true, true, false, m),
            Action::Apply,
            "foreign rules only"
        );
        let rec = Mode {
            reconcile: true,
            ..m
        };
        assert_eq!(decide(true, true, true, rec), Action::Reconcile);
        assert_eq!(decide(true, false, true, rec), Action::Nothing);
        let force = Mode {
            force_apply: true,
            ..m
        };
        assert_eq!(decide(true, false, true, force), Action::Apply);
        let clean = Mode {
            cleanup_only: true,
            ..m
        };
        assert_eq!(decide(false, true, false, clean), Action::Cleanup);
    }

    #[test]
    fn parses_save_output() {
        let save = "# Generated by iptables-nft-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:ISTIO_INBOUND - [0:0]\n:OTHER - [0:0]\n-A PREROUTING -p tcp -j ISTIO_INBOUND\n-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN\nCOMMIT\n*security\n-A INPUT -j ACCEPT\nCOMMIT\n";
        let s = State::parse(save);
        assert_eq!(s.tables.len(), 1, "only filter/mangle/nat/raw are read");
        let nat = &s.tables[&Table::Nat];
        assert_eq!(nat["ISTIO_INBOUND"].len(), 1);
        assert_eq!(nat["PREROUTING"].len(), 1);
        assert!(!nat.contains_key("OTHER"));
    }
}
