//! The data path: accepting connections, choosing listener and filter chain, forwarding.

pub mod select;
