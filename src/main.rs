//! The `hsmca` command line.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hsmca::ceremony::{self, CeremonyError, Progress};
use hsmca::config::{Config, ConfigError};
use hsmca::hsm::{Hsm, HsmError, KeyType};
use hsmca::ledger::audit::{self, AuditError};

/// hsmca: HSM-backed identity signing appliance for service meshes.
#[derive(Parser)]
#[command(name = "hsmca", version, about, long_about = None)]
struct Cli {
    /// Configuration file (TOML): the appliance's (default /etc/hsmca/hsmca.toml), or the
    /// ceremony's for `hsmca ceremony`.
    #[arg(long, short, global = true, env = "HSMCA_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect the HSM and manage development keys.
    Hsm {
        #[command(subcommand)]
        command: HsmCommand,
    },
    /// Run a key ceremony from a strict config file (`--config FILE.toml`).
    Ceremony {
        #[command(subcommand)]
        kind: CeremonyKind,
        /// Run every check with throwaway software keys; never load the HSM module, never
        /// write a file or an audit record.
        #[arg(long, global = true)]
        dry_run: bool,
    },
    /// Check the hash-chained audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Clone, Copy, Subcommand)]
enum CeremonyKind {
    /// Generate the root key pair in the HSM and its self-signed certificate.
    Root,
    /// Generate a key pair in the HSM (e.g. an online intermediate's) and write its public key.
    Key,
    /// Sign an online intermediate CA certificate with the root key.
    Intermediate,
    /// Sign a new root's subject and public key with an existing root key (root rotation).
    CrossSign,
    /// Make a CSR for an HSM key, to chain the mesh root under an external root.
    Csr,
    /// Sign a root CRL revoking intermediates.
    Crl,
}

impl From<CeremonyKind> for ceremony::Kind {
    fn from(kind: CeremonyKind) -> Self {
        match kind {
            CeremonyKind::Root => ceremony::Kind::Root,
            CeremonyKind::Key => ceremony::Kind::Key,
            CeremonyKind::Intermediate => ceremony::Kind::Intermediate,
            CeremonyKind::CrossSign => ceremony::Kind::CrossSign,
            CeremonyKind::Csr => ceremony::Kind::Csr,
            CeremonyKind::Crl => ceremony::Kind::Crl,
        }
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify every record of an audit log; names the first edited, removed, inserted or
    /// reordered record. Needs no configuration and no HSM.
    Verify {
        /// The audit log (JSON lines).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum HsmCommand {
    /// Show the module, its tokens, the token's mechanisms and its keys with their security
    /// attributes (never secret material).
    Info,
    /// Generate a key pair in the HSM (a developer convenience; officers use ceremonies).
    Keygen {
        /// Label of the new key pair; refused if the token already has it.
        #[arg(long)]
        label: String,
        /// Key type: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096 or ed25519.
        #[arg(long = "type", value_name = "TYPE", value_parser = parse_key_type)]
        key_type: KeyType,
        /// Also write the public key as PEM to this file (never overwritten).
        #[arg(long)]
        public_key_out: Option<PathBuf>,
    },
}

fn parse_key_type(name: &str) -> Result<KeyType, String> {
    name.parse().map_err(|e: HsmError| e.to_string())
}

/// Why a command failed; each message says what to do.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Hsm(#[from] HsmError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Ceremony(#[from] CeremonyError),
    #[error("a ceremony needs its config file: hsmca ceremony {0} --config FILE.toml")]
    CeremonyConfigMissing(&'static str),
    #[error(
        "{path} already exists: outputs are never overwritten; choose another path or move the old file away"
    )]
    OutputExists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HSMCA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("hsmca=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The appliance's configuration file when `--config` and `HSMCA_CONFIG` are not given.
const DEFAULT_CONFIG: &str = "/etc/hsmca/hsmca.toml";

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Hsm { command } => {
            let path = cli.config.unwrap_or_else(|| DEFAULT_CONFIG.into());
            let config = Config::load(&path)?;
            match command {
                HsmCommand::Info => {
                    let hsm = Hsm::open(&config.hsm)?;
                    emit(&hsm.inventory()?.to_string())
                }
                HsmCommand::Keygen {
                    label,
                    key_type,
                    public_key_out,
                } => keygen(&config, &label, key_type, public_key_out.as_deref()),
            }
        }
        Command::Ceremony { kind, dry_run } => {
            let kind = ceremony::Kind::from(kind);
            let path = cli
                .config
                .ok_or(CliError::CeremonyConfigMissing(kind.name()))?;
            ceremony::run(kind, &path, dry_run, &Progress::stdout())?;
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { file },
        } => {
            let verified = audit::verify(&file)?;
            emit(&format!(
                "audit log {}: {} records, chain intact\nhead: {}\n",
                file.display(),
                verified.records,
                verified.head
            ))
        }
    }
}

fn keygen(
    config: &Config,
    label: &str,
    key_type: KeyType,
    public_key_out: Option<&Path>,
) -> Result<(), CliError> {
    // Refuse before generating anything, so a bad path never leaves an orphan key behind.
    if let Some(path) = public_key_out.filter(|p| p.exists()) {
        return Err(CliError::OutputExists {
            path: path.to_owned(),
        });
    }
    let hsm = Hsm::open(&config.hsm)?;
    let key = hsm.generate_key(label, key_type)?;
    let public_key = key.public_key();
    let token = hsm.token();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "generated {key_type} key pair \"{label}\" on token \"{}\" (serial {})",
        token.label, token.serial
    );
    let _ = writeln!(report, "  CKA_ID:        {}", hex::encode(key.id()));
    let _ = writeln!(
        report,
        "  SPKI SHA-256:  {}",
        public_key.sha256_fingerprint()
    );
    let _ = writeln!(
        report,
        "  private key:   sensitive, never extractable, sign only"
    );
    report.push_str(&public_key.to_pem());
    emit(&report)?;
    if let Some(path) = public_key_out {
        let write_error = |source| CliError::Write {
            path: path.to_owned(),
            source,
        };
        ceremony::create_new_file(path, public_key.to_pem().as_bytes()).map_err(|source| {
            match source.kind() {
                std::io::ErrorKind::AlreadyExists => CliError::OutputExists {
                    path: path.to_owned(),
                },
                _ => write_error(source),
            }
        })?;
        emit(&format!("public key written to {}\n", path.display()))?;
    }
    Ok(())
}

/// Writes a command's report to stdout. A reader that went away (`| head`) is not an error:
/// the work is done either way.
fn emit(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Write {
            path: "standard output".into(),
            source: err,
        }),
        _ => Ok(()),
    }
}
