//! Running commands: for real, or recorded by the dry-run stub.

use std::io::Write;
use std::process::{Command, Stdio};

use thiserror::Error;

/// One command line, optionally fed on stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    pub stdin: Option<String>,
}

impl Cmd {
    pub fn new(
        program: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Cmd {
        Cmd {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            stdin: None,
        }
    }

    pub fn stdin(mut self, input: String) -> Cmd {
        self.stdin = Some(input);
        self
    }

    pub fn line(&self) -> String {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Error)]
pub enum ExecError {
    #[error("running `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({}): {}", describe_exit(*code), stderr.trim())]
    Failed {
        command: String,
        code: Option<i32>,
        stderr: String,
    },
}

impl ExecError {
    pub fn stderr(&self) -> &str {
        match self {
            ExecError::Failed { stderr, .. } => stderr,
            ExecError::Spawn { .. } => "",
        }
    }
}

/// xtables exit codes, as upstream names them.
fn describe_exit(code: Option<i32>) -> String {
    match code {
        Some(1) => "exit 1, xtables other problem".into(),
        Some(2) => "exit 2, xtables parameter problem".into(),
        Some(3) => "exit 3, xtables version problem".into(),
        Some(4) => "exit 4, xtables resource problem".into(),
        Some(c) => format!("exit {c}"),
        None => "killed by a signal".into(),
    }
}

pub trait Executor {
    fn run(&mut self, cmd: &Cmd) -> Result<Output, ExecError>;
    /// True for the dry-run stub: nothing is executed.
    fn is_stub(&self) -> bool {
        false
    }
}

/// Runs commands as child processes.
#[derive(Debug, Default)]
pub struct RealExecutor {
    /// Extra environment for every child (`XTABLES_LOCKFILE` in CNI mode).
    pub env: Vec<(String, String)>,
}

impl Executor for RealExecutor {
    fn run(&mut self, cmd: &Cmd) -> Result<Output, ExecError> {
        tracing::debug!(command = %cmd.line(), "running");
        let mut child = Command::new(&cmd.program);
        child
            .args(&cmd.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_err = |source| ExecError::Spawn {
            command: cmd.line(),
            source,
        };
        let mut child = child.spawn().map_err(spawn_err)?;
        if let (Some(input), Some(mut pipe)) = (&cmd.stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        let output = Output {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        if out.status.success() {
            Ok(output)
        } else {
            Err(ExecError::Failed {
                command: cmd.line(),
                code: out.status.code(),
                stderr: output.stderr,
            })
        }
    }
}

/// Dry-run: records what would run, succeeds with empty output. A command fed on stdin is
/// recorded as its stdin lines (that is upstream's record format, which its goldens use).
#[derive(Debug, Default)]
pub struct StubExecutor {
    pub record: Vec<String>,
}

impl Executor for StubExecutor {
    fn run(&mut self, cmd: &Cmd) -> Result<Output, ExecError> {
        match &cmd.stdin {
            Some(input) => self.record.extend(input.lines().map(String::from)),
            None => self.record.push(cmd.line()),
        }
        Ok(Output::default())
    }

    fn is_stub(&self) -> bool {
        true
    }
}
