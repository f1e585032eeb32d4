//! outrigger-agent: loads Outrigger's eBPF capture (`ebpf/capture.bpf.o`) with aya, attaches it
//! to a cgroup v2 directory, pins it under bpffs so that it outlives the agent, and keeps the
//! programs' view of meshed pods in step with a pod source.

pub mod capture;
pub mod http;
pub mod kube;
pub mod layout;
pub mod maps;
pub mod pods;
pub mod policy;
pub mod probe;
pub mod reconcile;
pub mod status;
pub mod sys;
