//! Watching the configuration directory: a cheap fingerprint (names, sizes, modification times)
//! polled a few times a second; a change that has settled for the debounce time is loaded and
//! published as a new version.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::findings::{Finding, Level};
use crate::mesh::{LoadError, Loader, Mesh, sort_findings};

/// One published configuration.
#[derive(Debug, Default)]
pub struct Published {
    pub version: u64,
    pub mesh: Mesh,
}

type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    crate::load::list_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).ok();
            let len = m.as_ref().map(|m| m.len()).unwrap_or(0);
            let modified = m.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect()
}

/// Logs findings as structured events.
pub fn log_findings(findings: &[Finding]) {
    for f in findings {
        let resource = f.resource.as_deref().unwrap_or("");
        let field = f.field.as_deref().unwrap_or("");
        match f.level {
            Level::Error => {
                tracing::error!(file = %f.origin.file.display(), doc = f.origin.doc, resource, field, "{}", f.message)
            }
            Level::Warning => {
                tracing::warn!(file = %f.origin.file.display(), doc = f.origin.doc, resource, field, "{}", f.message)
            }
        }
    }
}

/// Loads the directory once: the first version.
pub fn initial(dir: &Path, loader: &mut Loader) -> Result<(Published, Vec<Finding>), LoadError> {
    let (mesh, mut findings) = loader.load(dir)?;
    sort_findings(&mut findings);
    Ok((Published { version: 1, mesh }, findings))
}

/// Watches `dir` until the receivers are gone, publishing a new version on every settled change.
pub async fn run(
    dir: PathBuf,
    mut loader: Loader,
    tx: watch::Sender<Arc<Published>>,
    poll: Duration,
    debounce: Duration,
) {
    let mut last = fingerprint(&dir);
    let mut version = tx.borrow().version;
    loop {
        tokio::time::sleep(poll).await;
        if tx.is_closed() {
            return;
        }
        let now = fingerprint(&dir);
        if now == last {
            continue;
        }
        // Let a burst of writes settle.
        let mut settled = now;
        loop {
            tokio::time::sleep(debounce).await;
            let again = fingerprint(&dir);
            if again == settled {
                break;
            }
            settled = again;
        }
        last = settled;
        match loader.load(&dir) {
            Ok((mesh, mut findings)) => {
                sort_findings(&mut findings);
                log_findings(&findings);
                version += 1;
                tracing::info!(
                    version,
                    resources = mesh.objects.len(),
                    services = mesh.registry.services.len(),
                    "configuration reloaded"
                );
                let _ = tx.send(Arc::new(Published { version, mesh }));
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration not reloaded; the last one keeps serving")
            }
        }
    }
}
