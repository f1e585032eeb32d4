//! The embedded control plane (`--mesh-config DIR`): outrigger-pilot in this process, on a
//! private Unix socket, watching the directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::AppError;
use crate::xds::client::XdsAddress;

/// The socket's path: private to this process, removed when it exits.
fn socket_path() -> PathBuf {
    std::env::temp_dir().join(format!("outrigger-mesh-{}.sock", std::process::id()))
}

/// Removes the socket file when the process ends normally.
pub fn cleanup() {
    let _ = std::fs::remove_file(socket_path());
}

/// Loads `dir`, serves its xDS on the private socket, and reloads on change.
pub async fn start(dir: &Path) -> Result<XdsAddress, AppError> {
    use outrigger_pilot::{mesh::Loader, server, watch};
    let socket = socket_path();
    let mut loader = Loader::default();
    let (first, findings) =
        watch::initial(dir, &mut loader).map_err(|e| AppError::Mesh(format!("{e:#}")))?;
    watch::log_findings(&findings);
    tracing::info!(dir = %dir.display(), resources = first.mesh.objects.len(), services = first.mesh.registry.services.len(), "mesh configuration loaded");
    let (tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(first));
    let _server = server::serve(&server::ListenAddr::Unix(socket.clone()), rx)
        .await
        .map_err(|e| AppError::Mesh(e.to_string()))?;
    tokio::spawn(watch::run(
        dir.to_path_buf(),
        loader,
        tx,
        Duration::from_millis(200),
        Duration::from_millis(100),
    ));
    Ok(XdsAddress::Unix(socket))
}
