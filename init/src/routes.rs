//! Policy routing for TPROXY and the IPv6 passthrough address, through netlink.
//!
//! Equivalent to upstream's `ip -4/-6 rule add fwmark MARK lookup TABLE`,
//! `ip route add local 0.0.0.0/0 dev lo table TABLE` and `ip -6 addr add ::6/128 dev lo`, but
//! idempotent: an existing rule is not added twice, an existing route or address is kept.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{RouteScope, RouteType};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};
use thiserror::Error;

use crate::config::{Config, InboundPorts, InterceptionMode};

const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EADDRNOTAVAIL: i32 = 99;

#[derive(Debug, Error)]
pub enum RouteError {
    #[error("opening a netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("starting the netlink runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
}

/// What the routing setup of a config consists of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutePlan {
    /// `::6/128` on `lo` (IPv6 pods).
    pub passthrough_v6: bool,
    /// `(mark, table)` for TPROXY inbound capture.
    pub tproxy: Option<(u32, u32)>,
    pub ipv6: bool,
}

impl RoutePlan {
    pub fn of(cfg: &Config) -> RoutePlan {
        let tproxy =
            cfg.mode == InterceptionMode::Tproxy && cfg.inbound_ports != InboundPorts::None;
        RoutePlan {
            passthrough_v6: cfg.enable_ipv6,
            tproxy: tproxy.then_some((cfg.tproxy_mark, cfg.tproxy_route_table)),
            ipv6: cfg.enable_ipv6,
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.passthrough_v6 && self.tproxy.is_none()
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

fn ignore(
    result: Result<(), rtnetlink::Error>,
    codes: &[i32],
    what: &str,
) -> Result<(), RouteError> {
    match result {
        Err(e) if !errno(&e).is_some_and(|c| codes.contains(&c)) => Err(RouteError::Netlink {
            what: what.to_string(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn runtime<F: std::future::Future<Output = Result<(), RouteError>>>(
    f: impl FnOnce(Handle) -> F,
) -> Result<(), RouteError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(RouteError::Runtime)?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Connect)?;
        let task = tokio::spawn(conn);
        let result = f(handle).await;
        task.abort();
        result
    })
}

const LOOPBACK_INDEX: u32 = 1;

async fn find_rules(
    handle: &Handle,
    version: IpVersion,
    mark: u32,
    table: u32,
) -> Result<Vec<RuleMessage>, RouteError> {
    let rules: Vec<RuleMessage> = handle
        .rule()
        .get(version)
        .execute()
        .try_collect()
        .await
        .map_err(|source| RouteError::Netlink {
            what: "listing ip rules".into(),
            source,
        })?;
    Ok(rules
        .into_iter()
        .filter(|r| {
            let has = |a: RuleAttribute| r.attributes.contains(&a);
            has(RuleAttribute::FwMark(mark))
                && (has(RuleAttribute::Table(table)) || u32::from(r.header.table) == table)
        })
        .collect())
}

fn local_default_route(v6: bool, table: u32) -> rtnetlink::packet_route::route::RouteMessage {
    if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
            .output_interface(LOOPBACK_INDEX)
            .table_id(table)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(LOOPBACK_INDEX)
            .table_id(table)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .build()
    }
}

/// Installs the routing setup (never in dry-run).
pub fn configure(plan: RoutePlan) -> Result<(), RouteError> {
    if plan.is_empty() {
        return Ok(());
    }
    runtime(|handle| async move {
        if plan.passthrough_v6 {
            let addr = IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6));
            let r = handle
                .address()
                .add(LOOPBACK_INDEX, addr, 128)
                .execute()
                .await;
            ignore(r, &[EEXIST], "adding ::6/128 to lo")?;
        }
        if let Some((mark, table)) = plan.tproxy {
            let versions: &[(IpVersion, bool)] = if plan.ipv6 {
                &[(IpVersion::V4, false), (IpVersion::V6, true)]
            } else {
                &[(IpVersion::V4, false)]
            };
            for (version, v6) in versions {
                if find_rules(&handle, version.clone(), mark, table)
                    .await?
                    .is_empty()
                {
                    let add = handle
                        .rule()
                        .add()
                        .fw_mark(mark)
                        .table_id(table)
                        .action(RuleAction::ToTable);
                    let r = if *v6 {
                        add.v6().execute().await
                    } else {
                        add.v4().execute().await
                    };
                    ignore(
                        r,
                        &[EEXIST],
                        &format!("adding ip rule fwmark {mark} lookup {table}"),
                    )?;
                }
                let r = handle
                    .route()
                    .add(local_default_route(*v6, table))
                    .execute()
                    .await;
                ignore(
                    r,
                    &[EEXIST],
                    &format!("adding local default route to table {table}"),
                )?;
            }
        }
        Ok(())
    })
}

/// Removes what [`configure`] adds (used by `--cleanup-only`); missing pieces are fine.
pub fn remove(plan: RoutePlan) -> Result<(), RouteError> {
    if plan.is_empty() {
        return Ok(());
    }
    runtime(|handle| async move {
        if let Some((mark, table)) = plan.tproxy {
            let versions: &[(IpVersion, bool)] = if plan.ipv6 {
                &[(IpVersion::V4, false), (IpVersion::V6, true)]
            } else {
                &[(IpVersion::V4, false)]
            };
            for (version, v6) in versions {
                for rule in find_rules(&handle, version.clone(), mark, table).await? {
                    let r = handle.rule().del(rule).execute().await;
                    ignore(r, &[ENOENT], "deleting ip rule")?;
                }
                let r = handle
                    .route()
                    .del(local_default_route(*v6, table))
                    .execute()
                    .await;
                ignore(
                    r,
                    &[ENOENT, ESRCH],
                    &format!("deleting local default route of table {table}"),
                )?;
            }
        }
        if plan.passthrough_v6 {
            let addrs: Vec<_> = handle
                .address()
                .get()
                .set_link_index_filter(LOOPBACK_INDEX)
                .set_address_filter(IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6)))
                .execute()
                .try_collect()
                .await
                .map_err(|source| RouteError::Netlink {
                    what: "listing lo addresses".into(),
                    source,
                })?;
            for a in addrs {
                let r = handle.address().del(a).execute().await;
                ignore(r, &[EADDRNOTAVAIL, ENOENT], "deleting ::6/128 from lo")?;
            }
        }
        Ok(())
    })
}
