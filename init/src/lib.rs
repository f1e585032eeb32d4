//! `outrigger-init`: installs the iptables capture rules of an Istio sidecar pod, exactly as
//! Istio's `istio-iptables` (the `istio-init` container) does.
//!
//! The work is split into pure decisions and thin I/O:
//! - [`flags`]: argv + environment → [`flags::Settings`] with istio-iptables' precedence rules;
//! - [`config`]: settings + facts about the host → a validated [`config::Config`];
//! - [`plan`]: config → the ordered rule lists for IPv4 and IPv6 (pure);
//! - [`restore`]: rule lists → `iptables-restore` payloads and cleanup commands (pure);
//! - [`state`]: parse `iptables-save` and compare it with a plan (pure);
//! - [`exec`], [`detect`], [`routes`], [`validation`]: talking to iptables, netlink and sockets;
//! - [`run`]: the orchestration (verify, reconcile, apply, clean up).
#![forbid(unsafe_code)]

pub mod config;
pub mod detect;
pub mod exec;
pub mod flags;
pub mod goflag;
pub mod host;
pub mod plan;
pub mod restore;
pub mod routes;
pub mod run;
pub mod state;
pub mod validation;
