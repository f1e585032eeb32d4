//! Command line and environment of `istio-iptables`, with its precedence rules.
//!
//! Istio binds most flags to an environment variable of the same name (upper case, `-` → `_`),
//! applied *before* argv is parsed, so argv wins. A few flags have an "additional" variable that is
//! applied after the primary one and therefore wins over it. An env value that does not parse (a
//! bool such as `REDIRECT_DNS=yes`) is ignored, as upstream ignores the `Set` error. Argv values are
//! parsed strictly: a bad value is an error naming the flag.

use std::collections::HashMap;
use std::time::Duration;

use clap::Parser;

use crate::goflag;

/// Reads environment variables; a trait so tests can pass a map.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

fn go_bool(s: &str) -> Result<bool, String> {
    goflag::parse_bool(s).ok_or_else(|| format!("'{s}' is not a boolean (use true or false)"))
}

fn go_duration(s: &str) -> Result<Duration, String> {
    goflag::parse_duration(s).ok_or_else(|| format!("'{s}' is not a duration (e.g. 5s, 500ms)"))
}

/// Istio's sidecar capture rules installer; accepts every flag of `istio-iptables`.
///
/// Every flag except --envoy-port can also be given by the environment variable shown; the
/// command line wins. Run as `outrigger-init [FLAGS]`, `outrigger-init istio-iptables [FLAGS]`,
/// or installed under the names `istio-iptables` / `pilot-agent istio-iptables`.
#[derive(Parser, Debug, Default, Clone)]
#[command(
    name = "outrigger-init",
    args_override_self = true,
    version,
    about = "Installs the iptables rules that capture a pod's traffic for its Istio sidecar (drop-in for istio-iptables)",
    after_help = "Exit codes: 0 success (also: rules already in place), 1 bad input or apply failure, 126 --run-validation failed.\n\nEnv-only settings: ISTIO_OUTBOUND_OWNER_GROUPS (default '*'), ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE, ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR (default 127.0.0.1/32), ENVOY_USER (default istio-proxy), DRY_RUN_FILE_PATH."
)]
pub struct Cli {
    /// Port outbound traffic is redirected to (no env fallback) [default: 15001]
    #[arg(
        allow_hyphen_values = true,
        short = 'p',
        long = "envoy-port",
        value_name = "PORT"
    )]
    pub envoy_port: Option<String>,
    /// Port inbound traffic is redirected to [env: INBOUND_CAPTURE_PORT] [default: 15006]
    #[arg(
        allow_hyphen_values = true,
        short = 'z',
        long = "inbound-capture-port",
        value_name = "PORT"
    )]
    pub inbound_capture_port: Option<String>,
    /// HBONE tunnel port, never captured [env: INBOUND_TUNNEL_PORT] [default: 15008]
    #[arg(
        allow_hyphen_values = true,
        short = 'e',
        long = "inbound-tunnel-port",
        value_name = "PORT"
    )]
    pub inbound_tunnel_port: Option<String>,
    /// Comma list of UIDs whose traffic is not captured [env: PROXY_UID] [default: uid of $ENVOY_USER, else 1337]
    #[arg(
        allow_hyphen_values = true,
        short = 'u',
        long = "proxy-uid",
        value_name = "UIDS"
    )]
    pub proxy_uid: Option<String>,
    /// Comma list of GIDs whose traffic is not captured [env: PROXY_GID] [default: the --proxy-uid value]
    #[arg(
        allow_hyphen_values = true,
        short = 'g',
        long = "proxy-gid",
        value_name = "GIDS"
    )]
    pub proxy_gid: Option<String>,
    /// Inbound interception mode: TPROXY, or REDIRECT (any other value) [env: ISTIO_INBOUND_INTERCEPTION_MODE]
    #[arg(
        allow_hyphen_values = true,
        short = 'm',
        long = "istio-inbound-interception-mode",
        value_name = "MODE"
    )]
    pub inbound_interception_mode: Option<String>,
    /// Inbound ports to capture: comma list, '*' for all, empty for none [env: ISTIO_INBOUND_PORTS]
    #[arg(
        allow_hyphen_values = true,
        short = 'b',
        long = "istio-inbound-ports",
        value_name = "PORTS"
    )]
    pub inbound_ports: Option<String>,
    /// Inbound ports not captured when --istio-inbound-ports is '*' [env: ISTIO_LOCAL_EXCLUDE_PORTS]
    #[arg(
        allow_hyphen_values = true,
        short = 'd',
        long = "istio-local-exclude-ports",
        value_name = "PORTS"
    )]
    pub local_exclude_ports: Option<String>,
    /// Interfaces on which nothing is captured [env: ISTIO_EXCLUDE_INTERFACES]
    #[arg(
        allow_hyphen_values = true,
        short = 'c',
        long = "istio-exclude-interfaces",
        value_name = "IFACES"
    )]
    pub exclude_interfaces: Option<String>,
    /// Outbound CIDRs to capture: comma list, '*' for all, empty for none [env: ISTIO_SERVICE_CIDR]
    #[arg(
        allow_hyphen_values = true,
        short = 'i',
        long = "istio-service-cidr",
        value_name = "CIDRS"
    )]
    pub service_cidr: Option<String>,
    /// Outbound CIDRs never captured [env: ISTIO_SERVICE_EXCLUDE_CIDR]
    #[arg(
        allow_hyphen_values = true,
        short = 'x',
        long = "istio-service-exclude-cidr",
        value_name = "CIDRS"
    )]
    pub service_exclude_cidr: Option<String>,
    /// Outbound TCP ports always captured [env: ISTIO_OUTBOUND_PORTS]
    #[arg(
        allow_hyphen_values = true,
        short = 'q',
        long = "istio-outbound-ports",
        value_name = "PORTS"
    )]
    pub outbound_ports: Option<String>,
    /// Outbound ports never captured [env: ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE]
    #[arg(
        allow_hyphen_values = true,
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        value_name = "PORTS"
    )]
    pub local_outbound_ports_exclude: Option<String>,
    /// Interfaces whose inbound traffic is treated as outbound [env: KUBE_VIRT_INTERFACES]
    #[arg(
        allow_hyphen_values = true,
        short = 'k',
        long = "kube-virt-interfaces",
        value_name = "IFACES"
    )]
    pub kube_virt_interfaces: Option<String>,
    /// TPROXY fwmark [env: ISTIO_INBOUND_TPROXY_MARK] [default: 1337]
    #[arg(
        allow_hyphen_values = true,
        short = 't',
        long = "istio-inbound-tproxy-mark",
        value_name = "MARK"
    )]
    pub tproxy_mark: Option<String>,
    /// TPROXY policy routing table [env: ISTIO_INBOUND_TPROXY_ROUTE_TABLE] [default: 133]
    #[arg(
        allow_hyphen_values = true,
        short = 'r',
        long = "istio-inbound-tproxy-route-table",
        value_name = "TABLE"
    )]
    pub tproxy_route_table: Option<String>,
    /// Print the commands and restore payloads instead of running them [env: DRY_RUN]
    #[arg(short = 'n', long = "dry-run", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub dry_run: Option<bool>,
    /// Original-destination port of the validation probe [env: IPTABLES_PROBE_PORT] [default: 15002]
    #[arg(
        allow_hyphen_values = true,
        long = "iptables-probe-port",
        value_name = "PORT"
    )]
    pub probe_port: Option<u16>,
    /// Validation timeout, Go syntax [env: PROBE_TIMEOUT] [default: 5s]
    #[arg(allow_hyphen_values = true, long = "probe-timeout", value_parser = go_duration, value_name = "DURATION")]
    pub probe_timeout: Option<Duration>,
    /// Install nothing (use with --run-validation) [env: SKIP_RULE_APPLY]
    #[arg(long = "skip-rule-apply", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub skip_rule_apply: Option<bool>,
    /// Probe that capture works; exit 126 if not [env: RUN_VALIDATION]
    #[arg(long = "run-validation", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub run_validation: Option<bool>,
    /// Capture DNS to the agent on 15053 [env: REDIRECT_DNS, ISTIO_META_DNS_CAPTURE (wins)]
    #[arg(long = "redirect-dns", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub redirect_dns: Option<bool>,
    /// With --redirect-dns: capture all port-53 traffic, not only the resolv.conf servers [env: CAPTURE_ALL_DNS]
    #[arg(long = "capture-all-dns", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub capture_all_dns: Option<bool>,
    /// Drop packets in conntrack state INVALID [env: DROP_INVALID, INVALID_DROP (wins)]
    #[arg(long = "drop-invalid", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub drop_invalid: Option<bool>,
    /// Dual-stack pod: enable IPv6 rules if any IPv6 address exists [env: DUAL_STACK, ISTIO_DUAL_STACK (wins)]
    #[arg(long = "dual-stack", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub dual_stack: Option<bool>,
    /// Network namespace path (used for the pod-scoped xtables lock in --cni-mode) [env: NETWORK_NAMESPACE]
    #[arg(
        allow_hyphen_values = true,
        long = "network-namespace",
        value_name = "PATH"
    )]
    pub network_namespace: Option<String>,
    /// Running from a CNI plugin: use a pod-scoped xtables lock [env: CNI_MODE]
    #[arg(long = "cni-mode", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub cni_mode: Option<bool>,
    /// Repair drifted rules: clean up and re-apply behind guardrails [env: RECONCILE]
    #[arg(long = "reconcile", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub reconcile: Option<bool>,
    /// Only remove what these flags would install [env: CLEANUP_ONLY]
    #[arg(long = "cleanup-only", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub cleanup_only: Option<bool>,
    /// Apply even if the rules are already in place [env: FORCE_APPLY]
    #[arg(long = "force-apply", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub force_apply: Option<bool>,
    /// Use native nftables instead of iptables (not supported yet) [env: NATIVE_NFTABLES]
    #[arg(long = "native-nftables", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL")]
    pub native_nftables: Option<bool>,
    /// Force the iptables backend: legacy or nft [env: FORCE_IPTABLES_BINARY]
    #[arg(
        allow_hyphen_values = true,
        long = "force-iptables-binary",
        value_name = "legacy|nft"
    )]
    pub force_iptables_binary: Option<String>,

    /// Istio log levels, e.g. default:info (scope names other than 'default' are ignored)
    #[arg(
        allow_hyphen_values = true,
        long = "log_output_level",
        value_name = "LEVELS",
        help_heading = "Logging"
    )]
    pub log_output_level: Option<String>,
    /// Log as JSON lines
    #[arg(long = "log_as_json", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool, value_name = "BOOL", help_heading = "Logging")]
    pub log_as_json: Option<bool>,
    /// Accepted for compatibility; logs always go to stderr (stdout carries --dry-run output)
    #[arg(
        allow_hyphen_values = true,
        long = "log_target",
        value_name = "TARGET",
        help_heading = "Logging"
    )]
    pub log_target: Vec<String>,
    /// Accepted for compatibility
    #[arg(
        allow_hyphen_values = true,
        long = "log_caller",
        value_name = "SCOPES",
        help_heading = "Logging"
    )]
    pub log_caller: Option<String>,
    /// Accepted for compatibility
    #[arg(
        allow_hyphen_values = true,
        long = "log_stacktrace_level",
        value_name = "LEVELS",
        help_heading = "Logging"
    )]
    pub log_stacktrace_level: Option<String>,
    /// Accepted for compatibility
    #[arg(
        allow_hyphen_values = true,
        long = "log_rotate",
        value_name = "PATH",
        help_heading = "Logging"
    )]
    pub log_rotate: Option<String>,
    /// Accepted for compatibility
    #[arg(
        allow_hyphen_values = true,
        long = "log_rotate_max_age",
        value_name = "DAYS",
        help_heading = "Logging"
    )]
    pub log_rotate_max_age: Option<u32>,
    /// Accepted for compatibility
    #[arg(
        allow_hyphen_values = true,
        long = "log_rotate_max_backups",
        value_name = "N",
        help_heading = "Logging"
    )]
    pub log_rotate_max_backups: Option<u32>,
    /// Accepted for compatibility
    #[arg(
        allow_hyphen_values = true,
        long = "log_rotate_max_size",
        value_name = "MB",
        help_heading = "Logging"
    )]
    pub log_rotate_max_size: Option<u32>,
    /// Accepted for compatibility
    #[arg(
        allow_hyphen_values = true,
        long = "vklog",
        value_name = "LEVEL",
        help_heading = "Logging"
    )]
    pub vklog: Option<i32>,
}

/// Effective settings after applying argv > additional env > primary env > default. Values are
/// still strings as upstream keeps them; [`crate::config`] validates them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub envoy_port: String,
    pub inbound_capture_port: String,
    pub inbound_tunnel_port: String,
    pub proxy_uid: String,
    pub proxy_gid: String,
    pub inbound_interception_mode: String,
    pub inbound_ports: String,
    pub local_exclude_ports: String,
    pub exclude_interfaces: String,
    pub service_cidr: String,
    pub service_exclude_cidr: String,
    pub outbound_ports: String,
    pub local_outbound_ports_exclude: String,
    pub kube_virt_interfaces: String,
    pub tproxy_mark: String,
    pub tproxy_route_table: String,
    pub dry_run: bool,
    pub probe_port: u16,
    pub probe_timeout: Duration,
    pub skip_rule_apply: bool,
    pub run_validation: bool,
    pub redirect_dns: bool,
    pub capture_all_dns: bool,
    pub drop_invalid: bool,
    pub dual_stack: bool,
    pub network_namespace: String,
    pub cni_mode: bool,
    pub reconcile: bool,
    pub cleanup_only: bool,
    pub force_apply: bool,
    pub native_nftables: bool,
    pub force_iptables_binary: String,
    // Environment-only settings.
    pub owner_groups_include: String,
    pub owner_groups_exclude: String,
    pub ipv4_loopback_cidr: String,
    pub envoy_user: String,
    pub dry_run_file_path: Option<String>,
    // Logging.
    pub log_output_level: String,
    pub log_as_json: bool,
}

/// A string flag: argv, else the last set of `envs` (later names win), else the default.
fn string(argv: Option<String>, env: &dyn Env, envs: &[&str], default: &str) -> String {
    argv.or_else(|| envs.iter().rev().find_map(|name| env.var(name)))
        .unwrap_or_else(|| default.to_string())
}

/// A typed flag whose env value is ignored when it does not parse (as upstream).
fn typed<T>(
    argv: Option<T>,
    env: &dyn Env,
    envs: &[&str],
    parse: fn(&str) -> Option<T>,
    default: T,
) -> T {
    if let Some(v) = argv {
        return v;
    }
    // Applied in order, each successful parse overriding the previous one.
    let mut value = None;
    for name in envs {
        if let Some(v) = env.var(name).as_deref().and_then(parse) {
            value = Some(v);
        }
    }
    value.unwrap_or(default)
}

fn boolean(argv: Option<bool>, env: &dyn Env, envs: &[&str]) -> bool {
    typed(argv, env, envs, goflag::parse_bool, false)
}

impl Settings {
    /// Applies istio-iptables' precedence to parsed argv and the environment.
    pub fn resolve(cli: Cli, env: &dyn Env) -> Settings {
        Settings {
            // `--envoy-port` is bound without an env fallback upstream.
            envoy_port: cli.envoy_port.unwrap_or_else(|| "15001".into()),
            inbound_capture_port: string(
                cli.inbound_capture_port,
                env,
                &["INBOUND_CAPTURE_PORT"],
                "15006",
            ),
            inbound_tunnel_port: string(
                cli.inbound_tunnel_port,
                env,
                &["INBOUND_TUNNEL_PORT"],
                "15008",
            ),
            proxy_uid: string(cli.proxy_uid, env, &["PROXY_UID"], ""),
            proxy_gid: string(cli.proxy_gid, env, &["PROXY_GID"], ""),
            inbound_interception_mode: string(
                cli.inbound_interception_mode,
                env,
                &["ISTIO_INBOUND_INTERCEPTION_MODE"],
                "",
            ),
            inbound_ports: string(cli.inbound_ports, env, &["ISTIO_INBOUND_PORTS"], ""),
            local_exclude_ports: string(
                cli.local_exclude_ports,
                env,
                &["ISTIO_LOCAL_EXCLUDE_PORTS"],
                "",
            ),
            exclude_interfaces: string(
                cli.exclude_interfaces,
                env,
                &["ISTIO_EXCLUDE_INTERFACES"],
                "",
            ),
            service_cidr: string(cli.service_cidr, env, &["ISTIO_SERVICE_CIDR"], ""),
            service_exclude_cidr: string(
                cli.service_exclude_cidr,
                env,
                &["ISTIO_SERVICE_EXCLUDE_CIDR"],
                "",
            ),
            outbound_ports: string(cli.outbound_ports, env, &["ISTIO_OUTBOUND_PORTS"], ""),
            local_outbound_ports_exclude: string(
                cli.local_outbound_ports_exclude,
                env,
                &["ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE"],
                "",
            ),
            kube_virt_interfaces: string(
                cli.kube_virt_interfaces,
                env,
                &["KUBE_VIRT_INTERFACES"],
                "",
            ),
            tproxy_mark: string(cli.tproxy_mark, env, &["ISTIO_INBOUND_TPROXY_MARK"], "1337"),
            tproxy_route_table: string(
                cli.tproxy_route_table,
                env,
                &["ISTIO_INBOUND_TPROXY_ROUTE_TABLE"],
                "133",
            ),
            dry_run: boolean(cli.dry_run, env, &["DRY_RUN"]),
            probe_port: typed(
                cli.probe_port,
                env,
                &["IPTABLES_PROBE_PORT"],
                |s| s.parse().ok(),
                15002,
            ),
            probe_timeout: typed(
                cli.probe_timeout,
                env,
                &["PROBE_TIMEOUT"],
                goflag::parse_duration,
                Duration::from_secs(5),
            ),
            skip_rule_apply: boolean(cli.skip_rule_apply, env, &["SKIP_RULE_APPLY"]),
            run_validation: boolean(cli.run_validation, env, &["RUN_VALIDATION"]),
            redirect_dns: boolean(
                cli.redirect_dns,
                env,
                &["REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE"],
            ),
            capture_all_dns: boolean(cli.capture_all_dns, env, &["CAPTURE_ALL_DNS"]),
            drop_invalid: boolean(cli.drop_invalid, env, &["DROP_INVALID", "INVALID_DROP"]),
            dual_stack: boolean(cli.dual_stack, env, &["DUAL_STACK", "ISTIO_DUAL_STACK"]),
            network_namespace: string(cli.network_namespace, env, &["NETWORK_NAMESPACE"], ""),
            cni_mode: boolean(cli.cni_mode, env, &["CNI_MODE"]),
            reconcile: boolean(cli.reconcile, env, &["RECONCILE"]),
            cleanup_only: boolean(cli.cleanup_only, env, &["CLEANUP_ONLY"]),
            force_apply: boolean(cli.force_apply, env, &["FORCE_APPLY"]),
            native_nftables: boolean(cli.native_nftables, env, &["NATIVE_NFTABLES"]),
            force_iptables_binary: string(
                cli.force_iptables_binary,
                env,
                &["FORCE_IPTABLES_BINARY"],
                "",
            ),
            owner_groups_include: env
                .var("ISTIO_OUTBOUND_OWNER_GROUPS")
                .unwrap_or_else(|| "*".into()),
            owner_groups_exclude: env
                .var("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE")
                .unwrap_or_default(),
            ipv4_loopback_cidr: env
                .var("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR")
                .unwrap_or_else(|| "127.0.0.1/32".into()),
            envoy_user: env
                .var("ENVOY_USER")
                .unwrap_or_else(|| "istio-proxy".into()),
            dry_run_file_path: env.var("DRY_RUN_FILE_PATH").filter(|p| !p.is_empty()),
            log_output_level: cli
                .log_output_level
                .unwrap_or_else(|| "default:info".into()),
            log_as_json: cli.log_as_json.unwrap_or(false),
        }
    }
}

/// How the binary was invoked, decided from argv\[0\] and the first argument.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Run istio-iptables with these arguments (argv\[0\] first).
    IstioIptables(Vec<String>),
    /// `pilot-agent` called with something other than `istio-iptables`.
    UnsupportedPilotAgentCommand(String),
}

/// Accepts `outrigger-init [FLAGS]`, `outrigger-init istio-iptables [FLAGS]`,
/// `istio-iptables [FLAGS]` and `pilot-agent istio-iptables [FLAGS]`.
pub fn invocation(args: Vec<String>) -> Invocation {
    let program = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_else(|| "outrigger-init".into());
    let first = args.get(1).map(String::as_str);
    let rest = |skip: usize| {
        let mut v = vec![format!("{program} istio-iptables")];
        v.extend(args.iter().skip(skip).cloned());
        v
    };
    match (program.as_str(), first) {
        (_, Some("istio-iptables")) => Invocation::IstioIptables(rest(2)),
        ("pilot-agent", Some(other)) => Invocation::UnsupportedPilotAgentCommand(other.to_string()),
        ("pilot-agent", None) => Invocation::UnsupportedPilotAgentCommand(String::new()),
        _ => {
            let mut v = vec![program];
            v.extend(args.into_iter().skip(1));
            Invocation::IstioIptables(v)
        }
    }
}

#[cfg(test)]
mod tests;
