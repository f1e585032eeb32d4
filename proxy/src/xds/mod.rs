//! The xDS side: node identity, the resource store, and the ADS client.

pub mod client;
pub mod node;
pub mod store;

pub use store::ResourceType;
