//! Findings: what `check` prints and the server logs — an invalid resource, a skipped kind, a
//! field the proxy does not honour yet. Each names the file, the document, the resource and the
//! field.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warning,
}

/// Where a resource came from: a file and the 0-based index of its YAML document.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Origin {
    pub file: PathBuf,
    pub doc: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.file.display(), self.doc)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    pub origin: Origin,
    /// `Kind namespace/name`, when the document got that far.
    pub resource: Option<String>,
    /// The offending field's path (`spec.http[0].route`), when there is one.
    pub field: Option<String>,
    pub message: String,
}

impl Finding {
    pub fn error(
        origin: &Origin,
        resource: Option<&str>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Finding {
        Finding {
            level: Level::Error,
            origin: origin.clone(),
            resource: resource.map(String::from),
            field: field.map(String::from),
            message: message.into(),
        }
    }

    pub fn warning(
        origin: &Origin,
        resource: Option<&str>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Finding {
        Finding {
            level: Level::Warning,
            ..Finding::error(origin, resource, field, message)
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Error => "error",
            Level::Warning => "warning",
        };
        write!(f, "{level}: {}", self.origin)?;
        if let Some(r) = &self.resource {
            write!(f, " {r}")?;
        }
        if let Some(field) = &self.field {
            write!(f, " {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

pub fn has_errors(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.level == Level::Error)
}
