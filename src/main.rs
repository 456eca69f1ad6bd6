//! The `hsmca` command line.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hsmca::api::client::{Client, Layout, RequestKeyType, RequestOptions};
use hsmca::api::{Service, StartError};
use hsmca::ceremony::{self, CeremonyError, Progress};
use hsmca::config::{Config, ConfigError};
use hsmca::duration::Seconds;
use hsmca::hsm::{AlgorithmError, Hsm, HsmError, KeyType};
use hsmca::ledger::StorageBackend;
use hsmca::ledger::audit::{self, AuditError};
use hsmca::ledger::certificates::{
    CertificateFilter, CertificateStore, IssuedCertificate, Ledger, ListedCertificate,
    normalize_serial,
};
use hsmca::ledger::checkpoint::{CheckpointCheck, CheckpointReport, Witness};
use hsmca::ledger::postgres::{PostgresConfig, PostgresLedger};
use hsmca::ledger::reconcile::Reconciliation;
use hsmca::ledger::report::{Format as ReportFormat, Report, period_bound};
use hsmca::pki::CaCertificate;

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
    /// Move the ledger between storage backends.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// The certificates the appliance issued, from the configured store (needs no HSM).
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// What an auditor asks of a period, counted from the configured store's audit chain
    /// (verified first; a broken chain is named at the top): certificates issued per client,
    /// profile and issuer, refusals, revocations, CRLs, Vault logins, ceremonies.
    Report {
        /// The period's first day (`YYYY-MM-DD`, UTC) or time (RFC 3339).
        #[arg(long)]
        since: String,
        /// The day or time after the period (exclusive).
        #[arg(long)]
        until: String,
        /// Markdown, CSV or JSON.
        #[arg(long, value_enum, default_value = "md")]
        format: ReportFormat,
        #[command(flatten)]
        checkpoints: CheckpointArgs,
    },
    /// Check the hash-chained audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run the signing service (mTLS API) from the appliance config.
    Serve,
    /// Make a new CA key on this machine, have the appliance certify it, and write the files
    /// the mesh loads. The private key never leaves this machine.
    Request {
        #[command(flatten)]
        connection: Connection,
        /// The profile to ask for.
        #[arg(long, default_value = "issuing-ca")]
        profile: String,
        /// The SPIFFE trust domain of the new CA (its URI SAN is spiffe://<trust domain>).
        #[arg(long)]
        trust_domain: String,
        /// The lifetime to ask for (e.g. 720h); the profile's default when absent.
        #[arg(long)]
        ttl: Option<String>,
        /// The subject CN; default "<trust domain> issuing CA", or Linkerd's
        /// identity.linkerd.cluster.local.
        #[arg(long)]
        common_name: Option<String>,
        /// The key to make.
        #[arg(long, value_enum, default_value = "ecdsa-p256")]
        key_type: RequestKeyType,
        /// Where to write the files; existing files are never overwritten.
        #[arg(long)]
        out_dir: PathBuf,
        /// Which files to write: plain, istio (cacerts) or linkerd (identity issuer).
        #[arg(long, value_enum, default_value = "plain")]
        layout: Layout,
    },
    /// Make the running appliance read its configuration file again (officers only; SIGHUP
    /// does the same). A configuration that does not load is refused and the running one stays.
    Reload {
        #[command(flatten)]
        connection: Connection,
    },
    /// Revoke a certificate (officers only): the appliance records it, audits it and re-signs
    /// the issuer's CRL.
    Revoke {
        #[command(flatten)]
        connection: Connection,
        /// The serial, hex (colons allowed).
        #[arg(long)]
        serial: String,
        /// unspecified, key-compromise, ca-compromise, affiliation-changed, superseded,
        /// cessation-of-operation or privilege-withdrawn.
        #[arg(long)]
        reason: String,
        /// The issuer the certificate must be from (refused otherwise).
        #[arg(long)]
        issuer: Option<String>,
    },
    /// Write development TLS material for the API (a throwaway TLS CA, a localhost server
    /// certificate, client certificates). Not for production.
    DevTls {
        /// Directory to write into; existing files are never overwritten.
        #[arg(long)]
        out_dir: PathBuf,
        /// A client as NAME=URI (its identity); writes NAME.pem and NAME-key.pem.
        #[arg(long = "client", value_name = "NAME=URI", value_parser = parse_client)]
        clients: Vec<(String, String)>,
    },
}

/// How a command reaches the appliance: its URL and this side's mTLS identity.
#[derive(clap::Args)]
struct Connection {
    /// The appliance, e.g. https://127.0.0.1:8443.
    #[arg(long)]
    server: String,
    /// This client's (or officer's) TLS certificate (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Its TLS private key (PEM, mode 0600).
    #[arg(long)]
    key: PathBuf,
    /// The CA certificate(s) to trust for the appliance's TLS certificate (PEM).
    #[arg(long)]
    ca: PathBuf,
}

impl Connection {
    fn client(&self) -> Result<Client, CliError> {
        Client::new(&self.server, &self.cert, &self.key, &self.ca).map_err(CliError::Message)
    }
}

fn parse_client(value: &str) -> Result<(String, String), String> {
    value
        .split_once('=')
        .filter(|(name, uri)| !name.is_empty() && !uri.is_empty())
        .map(|(name, uri)| (name.to_owned(), uri.to_owned()))
        .ok_or_else(|| format!("{value:?} is not NAME=URI"))
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
enum LedgerCommand {
    /// Copy the SQLite ledger and audit log of `--config` into the empty PostgreSQL database
    /// of `--to`, in one transaction, the audit chain verified on the way. Stop hsmca first;
    /// then start it with the `--to` configuration. Needs no HSM.
    Migrate {
        /// The configuration to move to: its [storage] names the PostgreSQL database.
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// List issued certificates, oldest first: serial, client, profile, issuer, notAfter,
    /// revocation and subject; every option narrows the list.
    List {
        /// Only those the client with this identity asked for.
        #[arg(long)]
        client: Option<String>,
        /// Only those issued under this profile.
        #[arg(long)]
        profile: Option<String>,
        /// Only those signed by this issuer (its name in the configuration).
        #[arg(long)]
        issuer: Option<String>,
        /// Only those still valid that expire within this time (e.g. 720h).
        #[arg(long, value_parser = Seconds::parse)]
        expiring_within: Option<Seconds>,
        /// Only revoked certificates.
        #[arg(long)]
        revoked: bool,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one certificate: its ledger fields, its revocation and its PEM.
    Show {
        /// The serial, in hex, with or without `:` separators.
        serial: String,
    },
}

/// How `hsmca audit verify` and `hsmca report` check the chain's signed checkpoints.
#[derive(clap::Args)]
struct CheckpointArgs {
    /// The checkpoint key's public key (PEM, from its key ceremony): every checkpoint's
    /// signature is checked, and that the chain still holds the record each vouches for.
    #[arg(long, value_name = "PEM")]
    checkpoint_key: Option<PathBuf>,
    /// A witness of the checkpoints (the `[audit] witness_file`, or a syslog or journal
    /// export): a chain cut or rewritten behind its newest checkpoint is named by sequence
    /// number.
    #[arg(long, value_name = "FILE", requires = "checkpoint_key")]
    witness: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify every record of an audit log; names the first edited, removed, inserted or
    /// reordered record. With FILE it needs no configuration and no HSM; without, it checks
    /// the chain of the configured [storage] (the audit log file, or PostgreSQL's chain).
    Verify {
        /// The audit log (JSON lines); omitted: the configured store's chain.
        file: Option<PathBuf>,
        #[command(flatten)]
        checkpoints: CheckpointArgs,
    },
    /// Write the configured store's audit chain as JSON lines, the format of an audit log
    /// file, which `hsmca audit verify FILE` checks anywhere.
    Export {
        /// The new file (never overwritten).
        #[arg(long)]
        out: PathBuf,
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
    name.parse().map_err(|e: AlgorithmError| e.to_string())
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
    #[error("hsmca serve cannot start: {0}")]
    Start(#[from] StartError),
    #[error("{0}")]
    Message(String),
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
        Command::Serve => {
            let path = cli.config.unwrap_or_else(|| DEFAULT_CONFIG.into());
            serve(&Config::load(&path)?, &path)
        }
        Command::Reload { connection } => {
            let client = connection.client()?;
            let response = runtime()?
                .block_on(client.send("POST", "/v1/reload", None, Vec::new()))
                .map_err(CliError::Message)?;
            let answer = response.json().map_err(CliError::Message)?;
            if response.status != 200 {
                return Err(CliError::Message(format!(
                    "the appliance refused the reload ({} {}): {}",
                    response.status,
                    answer["error"]["code"].as_str().unwrap_or("?"),
                    answer["error"]["message"].as_str().unwrap_or("?")
                )));
            }
            emit(&format!("reloaded: {}\n", answer["reloaded"]))
        }
        Command::Request {
            connection,
            profile,
            trust_domain,
            ttl,
            common_name,
            key_type,
            out_dir,
            layout,
        } => {
            let client = connection.client()?;
            let options = RequestOptions {
                profile,
                trust_domain,
                common_name,
                ttl,
                key_type,
                layout,
                out_dir,
            };
            let written = runtime()?
                .block_on(hsmca::api::client::request(&client, &options))
                .map_err(CliError::Message)?;
            let mut report = String::from("certificate issued; wrote:\n");
            for path in written {
                let _ = writeln!(report, "  {}", path.display());
            }
            emit(&report)
        }
        Command::Revoke {
            connection,
            serial,
            reason,
            issuer,
        } => {
            let client = connection.client()?;
            let body = serde_json::json!({ "serial": serial, "reason": reason, "issuer": issuer });
            let response = runtime()?
                .block_on(client.send(
                    "POST",
                    "/v1/revoke",
                    Some("application/json"),
                    body.to_string().into_bytes(),
                ))
                .map_err(CliError::Message)?;
            let answer = response.json().map_err(CliError::Message)?;
            if response.status != 200 {
                return Err(CliError::Message(format!(
                    "the appliance refused ({} {}): {}",
                    response.status,
                    answer["error"]["code"].as_str().unwrap_or("?"),
                    answer["error"]["message"].as_str().unwrap_or("?")
                )));
            }
            emit(&format!(
                "revoked {} ({}) of issuer {}; CRL number {}\n",
                answer["serial"].as_str().unwrap_or("?"),
                answer["reason"].as_str().unwrap_or("?"),
                answer["issuer"].as_str().unwrap_or("?"),
                answer["crl_number"]
            ))
        }
        Command::DevTls { out_dir, clients } => {
            let written =
                hsmca::api::dev_tls::write(&out_dir, &clients).map_err(CliError::Message)?;
            let mut report = String::from("development TLS material (not for production):\n");
            for path in written {
                let _ = writeln!(report, "  {}", path.display());
            }
            emit(&report)
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file: Some(file),
                    checkpoints,
                },
        } => verify_audit_file(&file, &checkpoints),
        Command::Certs { command } => {
            let path = cli.config.unwrap_or_else(|| DEFAULT_CONFIG.into());
            let config = Config::load(&path)?;
            let runtime = runtime()?;
            let store = open_store(&configured_storage(&config, &path)?, &runtime)?;
            match command {
                CertsCommand::List {
                    client,
                    profile,
                    issuer,
                    expiring_within,
                    revoked,
                    json,
                } => {
                    let issuer_names = issuer_names(&config)?;
                    let issuer_key_id = issuer
                        .map(|name| {
                            issuer_names
                                .iter()
                                .find(|(_, known)| **known == name)
                                .map(|(key_id, _)| key_id.clone())
                                .ok_or_else(|| {
                                    CliError::Message(format!(
                                        "{}: no issuer {name:?} (the configured ones: {})",
                                        path.display(),
                                        config
                                            .issuers
                                            .keys()
                                            .cloned()
                                            .collect::<Vec<_>>()
                                            .join(", ")
                                    ))
                                })
                        })
                        .transpose()?;
                    let now = unix_now();
                    let filter = CertificateFilter {
                        client,
                        profile,
                        issuer_key_id,
                        expiring_before: expiring_within.map(|within| now + within.0 as i64),
                        revoked_only: revoked,
                    };
                    let listed = store
                        .list(&filter, now)
                        .map_err(|e| CliError::Message(e.to_string()))?;
                    emit(&certificate_list(&listed, &issuer_names, json))
                }
                CertsCommand::Show { serial } => {
                    let serial = normalize_serial(&serial);
                    let found = store
                        .find(&serial)
                        .and_then(|found| Ok((found, store.revoked_at(&serial)?)))
                        .map_err(|e| CliError::Message(e.to_string()))?;
                    let (Some(certificate), revoked_at) = found else {
                        return Err(CliError::Message(format!(
                            "no certificate with serial {serial} is in the ledger"
                        )));
                    };
                    emit(&certificate_details(
                        &certificate,
                        revoked_at,
                        &issuer_names(&config)?,
                    ))
                }
            }
        }
        Command::Report {
            since,
            until,
            format,
            checkpoints,
        } => {
            let bound = |date: &str| {
                period_bound(date).ok_or_else(|| {
                    CliError::Message(format!(
                        "{date:?} is neither a day (YYYY-MM-DD) nor an RFC 3339 UTC time"
                    ))
                })
            };
            let (since, until) = (bound(&since)?, bound(&until)?);
            let path = cli.config.unwrap_or_else(|| DEFAULT_CONFIG.into());
            let backend = storage_backend(&path)?;
            let (chain, records) = match &backend {
                StorageBackend::Sqlite { ledger, audit_log } => {
                    let chain = match audit::verify(audit_log) {
                        Ok(verified) => {
                            format!("intact ({} records in the file)", verified.records)
                        }
                        Err(error) => format!("BROKEN: {error}"),
                    };
                    let records = hsmca::ledger::sqlite_journal::chain_records(ledger, audit_log)
                        .map_err(|e| CliError::Message(e.to_string()))?;
                    (chain, records)
                }
                StorageBackend::Postgres(postgres) => {
                    let runtime = runtime()?;
                    let store = postgres_ledger(postgres, &runtime)?;
                    let chain = match store.verify_audit() {
                        Ok((records, _)) => format!("intact ({records} records)"),
                        Err(error) => format!("BROKEN: {error}"),
                    };
                    (chain, exported_chain(&store)?)
                }
            };
            let checked = checkpoint_report(&checkpoints, || Ok(records.iter()))?;
            let mut report =
                Report::build(records.iter().map(String::as_str), &since, &until, chain);
            if let Some(checked) = checked {
                report.checkpoint_check = Some(checked.summary());
            }
            emit(&report.render(format))
        }
        Command::Ledger {
            command: LedgerCommand::Migrate { to },
        } => {
            let from_path = cli.config.unwrap_or_else(|| DEFAULT_CONFIG.into());
            let (ledger, audit_log) = match storage_backend(&from_path)? {
                StorageBackend::Sqlite { ledger, audit_log } => (ledger, audit_log),
                StorageBackend::Postgres(_) => {
                    return Err(CliError::Message(format!(
                        "{}: [storage] is PostgreSQL already; migrate copies from SQLite",
                        from_path.display()
                    )));
                }
            };
            let StorageBackend::Postgres(postgres) = storage_backend(&to)? else {
                return Err(CliError::Message(format!(
                    "{}: [storage] must name the PostgreSQL database (postgres = …)",
                    to.display()
                )));
            };
            let runtime = runtime()?;
            let target = postgres_ledger(&postgres, &runtime)?;
            let migrated = hsmca::ledger::migrate::migrate(&ledger, &audit_log, &target)
                .map_err(|e| CliError::Message(e.to_string()))?;
            emit(&format!(
                "copied {} certificates, {} revocations, {} CRLs and {} audit records (chain verified, head {}) into PostgreSQL {}\nnext: start hsmca serve with {}\n",
                migrated.certificates,
                migrated.revocations,
                migrated.crls,
                migrated.audit_records,
                migrated.head,
                postgres.target(),
                to.display()
            ))
        }
        Command::Audit { command } => {
            let path = cli.config.unwrap_or_else(|| DEFAULT_CONFIG.into());
            match (command, storage_backend(&path)?) {
                (
                    AuditCommand::Verify { checkpoints, .. },
                    StorageBackend::Sqlite { ledger, audit_log },
                ) => {
                    let verified = audit::verify(&audit_log)?;
                    let (reconciliation, unwritten) =
                        hsmca::ledger::sqlite_journal::reconcile_store(&ledger, &audit_log)
                            .map_err(|e| CliError::Message(e.to_string()))?;
                    let mut report = audit_file_report(&audit_log, &verified);
                    if unwritten > 0 {
                        let _ = writeln!(
                            report,
                            "note: the ledger holds {unwritten} more committed records, not in the file yet: hsmca serve writes them within a second while it runs, or when it next starts"
                        );
                    }
                    let checked = checkpoint_report(&checkpoints, || {
                        hsmca::ledger::sqlite_journal::chain_records(&ledger, &audit_log)
                            .map_err(|e| CliError::Message(e.to_string()))
                    })?;
                    verdict(report, Some(&reconciliation), checked)
                }
                (AuditCommand::Verify { checkpoints, .. }, StorageBackend::Postgres(postgres)) => {
                    let runtime = runtime()?;
                    let store = postgres_ledger(&postgres, &runtime)?;
                    let (records, head) = store
                        .verify_audit()
                        .map_err(|e| CliError::Message(e.to_string()))?;
                    let reconciliation = store
                        .reconcile_audit()
                        .map_err(|e| CliError::Message(e.to_string()))?;
                    let checked = checkpoint_report(&checkpoints, || exported_chain(&store))?;
                    verdict(
                        format!(
                            "audit chain in PostgreSQL {}: {records} records, chain intact\nhead: {head}\n",
                            postgres.target()
                        ),
                        Some(&reconciliation),
                        checked,
                    )
                }
                (AuditCommand::Export { out }, backend) => {
                    let mut file = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(hsmca::files::PRIVATE)
                        .open(&out)
                        .map_err(|source| match source.kind() {
                            std::io::ErrorKind::AlreadyExists => {
                                CliError::OutputExists { path: out.clone() }
                            }
                            _ => CliError::Write {
                                path: out.clone(),
                                source,
                            },
                        })?;
                    let records = match backend {
                        StorageBackend::Sqlite { audit_log, .. } => {
                            let mut log = std::fs::File::open(&audit_log).map_err(|source| {
                                CliError::Write {
                                    path: audit_log.clone(),
                                    source,
                                }
                            })?;
                            std::io::copy(&mut log, &mut file).map_err(|source| {
                                CliError::Write {
                                    path: out.clone(),
                                    source,
                                }
                            })?;
                            audit::verify(&out)?.records
                        }
                        StorageBackend::Postgres(postgres) => {
                            let runtime = runtime()?;
                            postgres_ledger(&postgres, &runtime)?
                                .export_audit(&mut file)
                                .map_err(|e| CliError::Message(e.to_string()))?
                        }
                    };
                    file.sync_all().map_err(|source| CliError::Write {
                        path: out.clone(),
                        source,
                    })?;
                    emit(&format!(
                        "exported {records} audit records to {}\n",
                        out.display()
                    ))
                }
            }
        }
    }
}

/// The `[storage]` backend of the configuration at `path`, its paths resolved.
fn storage_backend(path: &Path) -> Result<StorageBackend, CliError> {
    configured_storage(&Config::load(path)?, path)
}

/// The `[storage]` backend of `config` (read from `path`), its paths resolved.
fn configured_storage(config: &Config, path: &Path) -> Result<StorageBackend, CliError> {
    Ok(config
        .storage
        .as_ref()
        .ok_or_else(|| CliError::Message(format!("{} has no [storage] section", path.display())))?
        .backend()
        .map_err(CliError::Message)?
        .resolved(|p| config.resolve(p)))
}

/// The store of `backend`, for a command that reads it from this thread (PostgreSQL's
/// connections live on `runtime`).
fn open_store(
    backend: &StorageBackend,
    runtime: &tokio::runtime::Runtime,
) -> Result<Box<dyn CertificateStore>, CliError> {
    Ok(match backend {
        StorageBackend::Sqlite { ledger, .. } => {
            Box::new(Ledger::open(ledger).map_err(|e| CliError::Message(e.to_string()))?)
        }
        StorageBackend::Postgres(postgres) => Box::new(postgres_ledger(postgres, runtime)?),
    })
}

/// The configured issuers' names by key identifier (hex), read from their certificates.
fn issuer_names(config: &Config) -> Result<BTreeMap<String, String>, CliError> {
    config
        .issuers
        .iter()
        .map(|(name, issuer)| {
            let certificate = CaCertificate::from_file(&config.resolve(&issuer.certificate))
                .map_err(|e| CliError::Message(e.to_string()))?;
            Ok((
                hex::encode(certificate.key_identifier().unwrap_or_default()),
                name.clone(),
            ))
        })
        .collect()
}

/// `hsmca certs list`'s output: a table, or one JSON object per line.
fn certificate_list(
    listed: &[ListedCertificate],
    issuer_names: &BTreeMap<String, String>,
    json: bool,
) -> String {
    let issuer = |key_id: &String| issuer_names.get(key_id).unwrap_or(key_id).clone();
    let mut out = String::new();
    if json {
        for certificate in listed {
            let _ = writeln!(
                out,
                "{}",
                serde_json::json!({
                    "serial": certificate.serial,
                    "client": certificate.client,
                    "profile": certificate.profile,
                    "issuer": issuer(&certificate.issuer_key_id),
                    "subject": certificate.subject,
                    "sans": certificate.sans,
                    "not_before": rfc3339(certificate.not_before),
                    "not_after": rfc3339(certificate.not_after),
                    "revoked": certificate.revoked.as_ref().map(|(reason, at)| {
                        serde_json::json!({ "reason": reason, "at": rfc3339(*at) })
                    }),
                })
            );
        }
        return out;
    }
    let _ = writeln!(
        out,
        "{:<40} {:<40} {:<12} {:<14} {:<20} {:<16} SUBJECT",
        "SERIAL", "CLIENT", "PROFILE", "ISSUER", "NOT AFTER", "REVOKED"
    );
    for certificate in listed {
        let revoked = certificate
            .revoked
            .as_ref()
            .map_or_else(|| "-".to_owned(), |(reason, _)| reason.clone());
        let _ = writeln!(
            out,
            "{:<40} {:<40} {:<12} {:<14} {:<20} {:<16} {}",
            certificate.serial,
            certificate.client,
            certificate.profile,
            issuer(&certificate.issuer_key_id),
            rfc3339(certificate.not_after),
            revoked,
            certificate.subject
        );
    }
    let _ = writeln!(out, "{} certificates", listed.len());
    out
}

/// `hsmca certs show`'s output.
fn certificate_details(
    certificate: &IssuedCertificate,
    revoked_at: Option<i64>,
    issuer_names: &BTreeMap<String, String>,
) -> String {
    let issuer = issuer_names
        .get(&certificate.issuer_key_id)
        .cloned()
        .unwrap_or_else(|| format!("key {}", certificate.issuer_key_id));
    let revoked = revoked_at.map_or_else(|| "no".to_owned(), |at| format!("at {}", rfc3339(at)));
    format!(
        "serial:     {}\nsubject:    {}\nsans:       {}\nprofile:    {}\nclient:     {}\nissuer:     {}\nnot before: {}\nnot after:  {}\nrevoked:    {}\n{}",
        certificate.serial,
        certificate.subject,
        certificate.sans.join(", "),
        certificate.profile,
        certificate.client,
        issuer,
        rfc3339(certificate.not_before),
        rfc3339(certificate.not_after),
        revoked,
        hsmca::pki::to_pem("CERTIFICATE", &certificate.der)
    )
}

/// Unix seconds as RFC 3339 (UTC).
fn rfc3339(seconds: i64) -> String {
    der::DateTime::from_unix_duration(std::time::Duration::from_secs(
        seconds.max(0).unsigned_abs(),
    ))
    .map_or_else(|_| seconds.to_string(), |time| time.to_string())
}

/// Now, in Unix seconds.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `hsmca audit verify FILE`.
fn verify_audit_file(file: &Path, checkpoints: &CheckpointArgs) -> Result<(), CliError> {
    let report = audit_file_report(file, &audit::verify(file)?);
    let checked = checkpoint_report(checkpoints, || {
        std::fs::read_to_string(file)
            .map(|text| text.lines().map(str::to_owned).collect::<Vec<_>>())
            .map_err(|source| {
                CliError::Message(format!("cannot read {}: {source}", file.display()))
            })
    })?;
    verdict(report, None, checked)
}

/// Ends `hsmca audit verify`'s `report` on an intact chain with how the store's certificates
/// match their `sign.issued` records (with `--config`) and what the checkpoints found (with
/// `--checkpoint-key`), and prints it: an error naming what is wrong if either is not clean.
fn verdict(
    mut report: String,
    reconciliation: Option<&Reconciliation>,
    checkpoints: Option<CheckpointReport>,
) -> Result<(), CliError> {
    let mut wrong = Vec::new();
    if let Some(reconciliation) = reconciliation {
        let _ = writeln!(report, "{}", reconciliation.summary());
        if !reconciliation.is_clean() {
            wrong.push(format!(
                "the store's certificates and the audit chain disagree: {}",
                reconciliation.summary()
            ));
        }
    }
    if let Some(checkpoints) = checkpoints {
        report.push_str(&checkpoints.render());
        if !checkpoints.is_clean() {
            wrong.push(format!(
                "the chain does not hold what its checkpoints vouch for ({} findings above)",
                checkpoints.findings.len()
            ));
        }
    }
    emit(&report)?;
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(CliError::Message(wrong.join("; ")))
    }
}

/// What the checkpoints of the chain `records` reads (oldest record first) say, checked with
/// `--checkpoint-key` and against `--witness`; `None`, and the chain not read, without a key.
fn checkpoint_report<R: AsRef<str>, I: IntoIterator<Item = R>>(
    args: &CheckpointArgs,
    records: impl FnOnce() -> Result<I, CliError>,
) -> Result<Option<CheckpointReport>, CliError> {
    let Some(key_path) = &args.checkpoint_key else {
        return Ok(None);
    };
    let key =
        hsmca::pki::read_public_key(key_path).map_err(|e| CliError::Message(e.to_string()))?;
    let witness = args
        .witness
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .map(|text| Witness::read(&text))
                .map_err(|source| {
                    CliError::Message(format!("cannot read witness {}: {source}", path.display()))
                })
        })
        .transpose()?;
    let mut check = CheckpointCheck::new(&key);
    for record in records()? {
        check.record(record.as_ref());
    }
    Ok(Some(check.finish(witness)))
}

/// The PostgreSQL store's whole audit chain, oldest record first.
fn exported_chain(store: &PostgresLedger) -> Result<Vec<String>, CliError> {
    let mut exported = Vec::new();
    store
        .export_audit(&mut exported)
        .map_err(|e| CliError::Message(e.to_string()))?;
    Ok(String::from_utf8_lossy(&exported)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// What `hsmca audit verify` says of the intact audit log at `file`.
fn audit_file_report(file: &Path, verified: &audit::VerifiedLog) -> String {
    format!(
        "audit log {}: {} records, chain intact\nhead: {}\n",
        file.display(),
        verified.records,
        verified.head
    )
}

/// The configured PostgreSQL store, its connections on `runtime`, for a command that then
/// reads it from this thread.
fn postgres_ledger(
    postgres: &PostgresConfig,
    runtime: &tokio::runtime::Runtime,
) -> Result<PostgresLedger, CliError> {
    runtime
        .block_on(PostgresLedger::connect(postgres, runtime.handle().clone()))
        .map_err(|e| CliError::Message(e.to_string()))
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Message(format!("cannot start the async runtime: {e}")))
}

fn serve(config: &Config, path: &Path) -> Result<(), CliError> {
    let server = config.server.as_ref().ok_or_else(|| {
        CliError::Message(
            "hsmca serve cannot start: the config file has no [server] section".into(),
        )
    })?;
    // TLS material first: a bad key file should not cost an HSM login.
    let tls = hsmca::api::server_config(server, |p| config.resolve(p))
        .map_err(|e| CliError::Message(format!("hsmca serve cannot start: {e}")))?;
    let runtime = runtime()?;
    let service = {
        let _guard = runtime.enter();
        Service::start(config, path)?
    };
    runtime
        .block_on(hsmca::api::serve(service, tls))
        .map_err(|e| CliError::Message(format!("hsmca serve: {e}")))
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
        hsmca::files::create_new_file(path, public_key.to_pem().as_bytes(), hsmca::files::PUBLIC)
            .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => CliError::OutputExists {
                path: path.to_owned(),
            },
            _ => write_error(source),
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
