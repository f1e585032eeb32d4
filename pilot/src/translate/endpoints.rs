//! EDS: one ClusterLoadAssignment per EDS cluster, the instances of its service port whose
//! labels match the subset, grouped by locality.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as ep;
use envoy_types::pb::google::protobuf::Any;

use super::Ctx;
use super::clusters::Built;
use super::wire::{self, istio_metadata, string_value};
use crate::registry::Instance;

fn locality(l: Option<&str>) -> Option<core::Locality> {
    let l = l?;
    let mut parts = l.split('/');
    Some(core::Locality {
        region: parts.next().unwrap_or("").into(),
        zone: parts.next().unwrap_or("").into(),
        sub_zone: parts.next().unwrap_or("").into(),
    })
}

fn lb_endpoint(i: &Instance) -> ep::LbEndpoint {
    let workload = format!(
        "{};{};{};{};Kubernetes",
        i.workload,
        i.namespace,
        i.labels.get("app").map(String::as_str).unwrap_or(""),
        i.labels.get("version").map(String::as_str).unwrap_or("")
    );
    ep::LbEndpoint {
        host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
            address: Some(wire::socket(&i.address, i.port)),
            ..Default::default()
        })),
        health_status: if i.healthy {
            core::HealthStatus::Healthy as i32
        } else {
            core::HealthStatus::Unhealthy as i32
        },
        load_balancing_weight: wire::u32_value(i.weight),
        metadata: Some(istio_metadata(&[("workload", string_value(&workload))])),
    }
}

/// The assignment for `cluster_name`.
pub fn assignment(
    ctx: &Ctx,
    cluster_name: &str,
    src: &super::clusters::EdsSource,
) -> ep::ClusterLoadAssignment {
    let mut by_locality: BTreeMap<Option<String>, Vec<ep::LbEndpoint>> = BTreeMap::new();
    for i in ctx
        .mesh
        .registry
        .instances_of(&src.hostname, src.port, &src.subset_labels)
    {
        by_locality
            .entry(i.locality.clone())
            .or_default()
            .push(lb_endpoint(i));
    }
    // Locality load balancing for this proxy: failover priorities or distribute weights.
    let groups: Vec<Option<&str>> = by_locality.keys().map(|l| l.as_deref()).collect();
    let setting = super::locality::effective(
        src.locality_lb.as_ref(),
        ctx.mesh_config()
            .and_then(|m| m.locality_lb_setting.as_ref()),
    );
    let placed = super::locality::place(
        &groups,
        ctx.proxy.locality.as_deref(),
        setting,
        src.outlier_detection,
    );
    ep::ClusterLoadAssignment {
        cluster_name: cluster_name.into(),
        endpoints: by_locality
            .into_iter()
            .zip(placed)
            .map(|((l, lb_endpoints), place)| ep::LocalityLbEndpoints {
                locality: locality(l.as_deref()),
                lb_endpoints: if place.kept { lb_endpoints } else { Vec::new() },
                load_balancing_weight: place.weight.and_then(wire::u32_value),
                priority: place.priority,
                ..Default::default()
            })
            .collect(),
        policy: Some(ep::cluster_load_assignment::Policy {
            overprovisioning_factor: wire::u32_value(140),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// EDS resources for the EDS clusters; DNS clusters get theirs inline.
pub fn build(ctx: &Ctx, clusters: &mut Built) -> BTreeMap<String, Any> {
    let mut out = BTreeMap::new();
    for (name, (c, src)) in clusters.iter_mut() {
        let Some(src) = src else { continue };
        let cla = assignment(ctx, name, src);
        if c.eds_cluster_config.is_some() {
            out.insert(name.clone(), wire::pack(&cla));
        } else {
            c.load_assignment = Some(cla);
        }
    }
    out
}
