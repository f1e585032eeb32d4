//! The orchestration of one run: detect binaries, compare the current rules with the plan, then
//! apply, reconcile, clean up or do nothing; then routes and validation.

use thiserror::Error;

use crate::config::Config;
use crate::detect::{self, DetectError, Iptables};
use crate::exec::{Cmd, ExecError, Executor};
use crate::plan::{self, Family, Plan, Rule};
use crate::restore;
use crate::routes::{self, RouteError, RoutePlan};
use crate::state::{self, Action, Drift, State, Verdict};
use crate::validation::{self, Probe, ValidationError};

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub reconcile: bool,
    pub cleanup_only: bool,
    pub force_apply: bool,
    pub skip_rule_apply: bool,
    pub run_validation: bool,
    pub probe: Option<Probe>,
}

impl Options {
    /// The run options of the settings (the probe listens where the config says the proxy is).
    pub fn from_settings(s: &crate::flags::Settings, cfg: &Config) -> Options {
        Options {
            reconcile: s.reconcile,
            cleanup_only: s.cleanup_only,
            force_apply: s.force_apply,
            skip_rule_apply: s.skip_rule_apply,
            run_validation: s.run_validation,
            probe: Some(Probe {
                envoy_port: cfg.envoy_port,
                inbound_port: cfg.inbound_capture_port,
                probe_port: s.probe_port,
                timeout: s.probe_timeout,
                ipv6: cfg.host_ip.is_ipv6(),
            }),
        }
    }
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error("the {family} rules differ from this configuration and reconcile is off; nothing was changed:\n  {}\nre-run with --reconcile to repair them, or with --cleanup-only and the flags they were installed with to remove them", drift.join("\n  "))]
    Drift {
        family: &'static str,
        drift: Vec<String>,
    },
    #[error("installing guardrails before reconcile: {0}")]
    Guardrail(ExecError),
    #[error("applying the {family} rules: {source}{hint}")]
    Apply {
        family: &'static str,
        source: ExecError,
        hint: &'static str,
    },
    #[error("configuring routes: {0}")]
    Routes(#[from] RouteError),
    #[error(transparent)]
    Validation(#[from] ValidationError),
}

impl RunError {
    /// The process exit code: 126 for failed validation as upstream, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Validation(_) => validation::EXIT_CODE,
            _ => 1,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub action: Option<Action>,
    pub drift: Vec<Drift>,
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

struct FamilyOps<'a> {
    family: Family,
    ipt: Option<Iptables>,
    rules: &'a [Rule],
}

impl FamilyOps<'_> {
    fn run(
        &self,
        exec: &mut dyn Executor,
        args: Vec<String>,
        write: bool,
    ) -> Result<String, ExecError> {
        let ipt = self
            .ipt
            .as_ref()
            .ok_or_else(|| detect::missing_binary(self.family))?;
        let mut args = args;
        if write {
            args.extend(ipt.wait_args());
        }
        exec.run(&Cmd::new(&ipt.bin, args)).map(|o| o.stdout)
    }

    fn save(&self, exec: &mut dyn Executor) -> Result<String, ExecError> {
        let ipt = self
            .ipt
            .as_ref()
            .ok_or_else(|| detect::missing_binary(self.family))?;
        exec.run(&Cmd::new(&ipt.save, Vec::<String>::new()))
            .map(|o| o.stdout)
    }

    fn verify(&self, exec: &mut dyn Executor) -> (Verdict, State) {
        match self.save(exec) {
            Err(e) => {
                tracing::debug!(family = family_name(self.family), error = %e, "cannot read the current rules: treating as empty");
                (
                    Verdict {
                        residue: false,
                        delta: !self.rules.is_empty(),
                        drift: Vec::new(),
                    },
                    State::default(),
                )
            }
            Ok(text) => {
                let current = State::parse(&text);
                let verdict = state::verify(&current, self.rules, |rule| {
                    let mut args = vec![
                        "-t".to_string(),
                        rule.table.to_string(),
                        "-C".into(),
                        rule.chain.clone(),
                    ];
                    args.extend(rule.spec.iter().cloned());
                    self.run(exec, args, true).is_ok()
                });
                (verdict, current)
            }
        }
    }

    fn apply(&self, exec: &mut dyn Executor) -> Result<(), RunError> {
        let Some(ipt) = &self.ipt else {
            return Err(RunError::Apply {
                family: family_name(self.family),
                source: detect::missing_binary(self.family),
                hint: "",
            });
        };
        let mut args = vec!["--noflush".to_string()];
        args.extend(ipt.wait_args());
        let cmd = Cmd::new(&ipt.restore, args).stdin(restore::payload(self.rules));
        exec.run(&cmd).map_err(|source| {
            let hint =
                if source.stderr().contains("already exists") || source.stderr().contains("line") {
                    "\nthe rules are (partly) in place already: use --reconcile to re-install them"
                } else {
                    ""
                };
            RunError::Apply {
                family: family_name(self.family),
                source,
                hint,
            }
        })?;
        Ok(())
    }

    fn cleanup(&self, exec: &mut dyn Executor) {
        for args in restore::cleanup_commands(self.rules) {
            if let Err(e) = self.run(exec, args, true) {
                tracing::debug!(error = %e, "cleanup command failed (ignored)");
            }
        }
    }

    fn guardrails(&self, exec: &mut dyn Executor, install: bool) -> Result<(), ExecError> {
        for chain in ["INPUT", "FORWARD", "OUTPUT"] {
            for proto in ["tcp", "udp"] {
                let del = vec!["-t", "filter", "-D", chain, "-p", proto, "-j", "DROP"];
                let _ = self.run(exec, del.into_iter().map(String::from).collect(), true);
                if install {
                    let add = vec!["-t", "filter", "-I", chain, "1", "-p", proto, "-j", "DROP"];
                    self.run(exec, add.into_iter().map(String::from).collect(), true)?;
                }
            }
        }
        Ok(())
    }
}

/// Programs the rules of `cfg` (unless `skip_rule_apply`), then routes and validation.
pub fn program(cfg: &Config, opts: &Options, exec: &mut dyn Executor) -> Result<Report, RunError> {
    let mut report = Report {
        action: None,
        drift: Vec::new(),
    };
    if opts.skip_rule_apply {
        tracing::info!("--skip-rule-apply: no rules or routes are installed");
    } else {
        let plan = plan::plan(cfg);
        let routes = RoutePlan::of(cfg);
        // Routes go in before the rules (upstream: after) so that a routing failure leaves no
        // rules behind; both are idempotent, so a re-run completes either order.
        if !exec.is_stub() && !opts.cleanup_only {
            routes::configure(routes)?;
        }
        report = apply_plan(cfg, &plan, opts, exec)?;
        if !exec.is_stub() && opts.cleanup_only {
            routes::remove(routes)?;
        }
    }
    if opts.run_validation
        && let Some(probe) = opts.probe
    {
        validation::validate(probe)?;
    }
    Ok(report)
}

fn apply_plan(
    cfg: &Config,
    plan: &Plan,
    opts: &Options,
    exec: &mut dyn Executor,
) -> Result<Report, RunError> {
    let (v4_ipt, v6_ipt) = if exec.is_stub() {
        (
            Iptables::plain(Family::V4),
            Some(Iptables::plain(Family::V6)),
        )
    } else {
        let v4 = detect::detect(exec, Family::V4, cfg.force_binary)?;
        let v6 = match detect::detect(exec, Family::V6, cfg.force_binary) {
            Ok(v6) => Some(v6),
            Err(e) if cfg.enable_ipv6 => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "ip6tables is not usable; fine since this pod has no IPv6 address");
                None
            }
        };
        (v4, v6)
    };
    tracing::info!(iptables = %v4_ipt.bin, nft = v4_ipt.nft, version = ?v4_ipt.version, "using iptables");
    let families = [
        FamilyOps {
            family: Family::V4,
            ipt: Some(v4_ipt),
            rules: &plan.v4,
        },
        FamilyOps {
            family: Family::V6,
            ipt: v6_ipt,
            rules: &plan.v6,
        },
    ];
    let active = |f: &FamilyOps| f.family == Family::V4 || cfg.enable_ipv6;

    // Compare the current rules of both families with the plan.
    let (mut residue, mut delta, mut chains_exist) = (false, false, false);
    let mut drift_by_family = Vec::new();
    for f in &families {
        let (verdict, current) = f.verify(exec);
        if !f.rules.is_empty() {
            residue |= verdict.residue;
            delta |= verdict.delta;
            chains_exist |= !current.istio_chains().is_empty();
            if !verdict.drift.is_empty() {
                drift_by_family.push((f.family, verdict.drift.clone()));
            }
        }
        if verdict.residue && !f.rules.is_empty() {
            tracing::info!(
                family = family_name(f.family),
                residue = verdict.residue,
                delta = verdict.delta,
                "current rules checked"
            );
        }
    }
    // Differences only matter as "drift" when a previous install left our chains behind.
    for (family, drift) in &drift_by_family {
        for d in drift {
            if chains_exist {
                tracing::warn!(family = family_name(*family), "drift: {d}");
            } else {
                tracing::debug!(family = family_name(*family), "not installed yet: {d}");
            }
        }
    }
    let mode = state::Mode {
        reconcile: opts.reconcile,
        cleanup_only: opts.cleanup_only,
        force_apply: opts.force_apply,
    };
    let action = state::decide(residue, delta, chains_exist, mode);
    let report = Report {
        action: Some(action),
        drift: drift_by_family
            .iter()
            .flat_map(|(_, d)| d.clone())
            .collect(),
    };

    let dry = if exec.is_stub() {
        "dry run, nothing executed: "
    } else {
        ""
    };
    let result = (|| -> Result<(), RunError> {
        match action {
            Action::Nothing => {
                tracing::info!(
                    "the rules of this configuration are already in place: nothing to do"
                );
            }
            Action::RefuseDrift => {
                let (family, drift) = &drift_by_family[0];
                return Err(RunError::Drift {
                    family: family_name(*family),
                    drift: drift.iter().map(ToString::to_string).collect(),
                });
            }
            Action::Apply => {
                if !delta && opts.force_apply {
                    tracing::warn!(
                        "--force-apply: the rules are in place already; applying anyway"
                    );
                }
                for f in families.iter().filter(|f| active(f)) {
                    f.apply(exec)?;
                }
                tracing::info!("{dry}rules applied");
            }
            Action::Reconcile => {
                tracing::info!(
                    "reconciling: blocking traffic with guardrails while the rules are re-installed"
                );
                for f in families.iter().filter(|f| active(f)) {
                    f.guardrails(exec, true).map_err(RunError::Guardrail)?;
                }
                let applied = (|| -> Result<(), RunError> {
                    for f in families.iter().filter(|f| active(f)) {
                        f.cleanup(exec);
                    }
                    for f in families.iter().filter(|f| active(f)) {
                        f.apply(exec)?;
                    }
                    Ok(())
                })();
                for f in families.iter().filter(|f| active(f)) {
                    let _ = f.guardrails(exec, false);
                }
                applied?;
                tracing::info!("{dry}rules reconciled");
            }
            Action::Cleanup => {
                for f in families.iter().filter(|f| active(f)) {
                    f.cleanup(exec);
                }
                tracing::info!("{dry}rules of this configuration removed");
            }
        }
        Ok(())
    })();

    // Upstream logs the final state in a deferred call, so it runs after errors too.
    for f in families.iter().filter(|f| active(f)) {
        if let Ok(saved) = f.save(exec) {
            tracing::debug!(
                family = family_name(f.family),
                "final iptables state:\n{saved}"
            );
        }
    }
    result?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    //! Decisions of a run against a scripted executor (the real behaviour is covered by the
    //! namespace tests; here: what cannot be provoked there, such as a missing ip6tables).
    use super::*;
    use crate::config::{
        Cidr, DnsCapture, InboundPorts, InterceptionMode, OutboundInclude, OwnerGroups,
    };
    use crate::exec::Output;

    /// nft works for IPv4; every ip6tables command fails as on a host booted with ipv6.disable=1.
    #[derive(Default)]
    struct NoIpv6 {
        ran: Vec<String>,
    }

    impl Executor for NoIpv6 {
        fn run(&mut self, cmd: &Cmd) -> Result<Output, ExecError> {
            self.ran.push(cmd.line());
            if cmd.program.starts_with("ip6tables") || cmd.program.starts_with("iptables-legacy") {
                return Err(ExecError::Failed {
                    command: cmd.line(),
                    code: Some(3),
                    stderr: "Address family not supported by protocol".into(),
                });
            }
            let stdout = if cmd.args.first().map(String::as_str) == Some("--version") {
                "iptables-nft-save v1.8.9 (nf_tables)\n"
            } else {
                ""
            };
            Ok(Output {
                stdout: stdout.into(),
                stderr: String::new(),
            })
        }
    }

    fn cfg(ipv6: bool) -> Config {
        Config {
            envoy_port: 15001,
            inbound_capture_port: 15006,
            tunnel_port: 15008,
            proxy_uids: vec!["1337".into()],
            proxy_gids: vec!["1337".into()],
            mode: InterceptionMode::Redirect,
            inbound_ports: InboundPorts::All { exclude: vec![] },
            exclude_interfaces: vec![],
            kube_virt_interfaces: vec![],
            outbound_include: OutboundInclude::All,
            outbound_exclude: vec![],
            outbound_ports_include: vec![],
            outbound_ports_exclude: vec![],
            tproxy_mark: 1337,
            tproxy_route_table: 133,
            dns: DnsCapture::Off,
            drop_invalid: false,
            owner_groups: OwnerGroups::AllExcept(vec![]),
            loopback_v4: "127.0.0.1/32".parse::<Cidr>().unwrap(),
            enable_ipv6: ipv6,
            host_ip: if ipv6 {
                "fd00::1".parse().unwrap()
            } else {
                "10.0.0.1".parse().unwrap()
            },
            force_binary: None,
        }
    }

    fn opts() -> Options {
        // Routes are not configured by `apply_plan`; validation is off.
        Options::default()
    }

    #[test]
    fn missing_ip6tables_is_fine_for_an_ipv4_pod() {
        let mut exec = NoIpv6::default();
        let report = apply_plan(&cfg(false), &plan::plan(&cfg(false)), &opts(), &mut exec)
            .expect("IPv4 pod");
        assert_eq!(report.action, Some(Action::Apply));
        assert!(
            exec.ran
                .iter()
                .any(|c| c == "iptables-nft-restore --noflush"),
            "{:?}",
            exec.ran
        );
        assert!(
            !exec
                .ran
                .iter()
                .any(|c| c.starts_with("ip6tables-nft-restore"))
        );
    }

    #[test]
    fn missing_ip6tables_is_fatal_for_an_ipv6_pod() {
        let mut exec = NoIpv6::default();
        let err = apply_plan(&cfg(true), &plan::plan(&cfg(true)), &opts(), &mut exec)
            .expect_err("IPv6 pod");
        assert!(matches!(err, RunError::Detect(_)), "{err}");
        assert!(
            !exec.ran.iter().any(|c| c.contains("restore")),
            "nothing applied: {:?}",
            exec.ran
        );
    }
}
