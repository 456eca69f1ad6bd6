//! P-256 signing throughput of the session pool against the raw PKCS#11 ceiling.
//!
//! `cargo bench --bench hsm_pool` makes a fresh SoftHSM2 token, generates a P-256 key, and for
//! 1, 2, 4 and 8 workers measures:
//!
//! * **raw**: N OS threads, each with its own session, calling `C_Sign` (`CKM_ECDSA` over a
//!   fixed 32-byte digest) in a tight loop. PKCS#11 is initialised once per process and this
//!   process's module belongs to [`Hsm`], so the raw loop runs in a child process: this same
//!   binary, re-executed as `hsm_pool --raw N PIN_FILE SECONDS`.
//! * **pool**: [`SignerPool`] with N sessions, driven by 4×N tokio tasks on a multi-thread
//!   runtime, each awaiting `pool.sign` in a loop. This includes what the service pays per
//!   signature on top of `C_Sign`: hashing the message, the queue, the worker hand-off, the
//!   reply and the DER encoding.
//!
//! Each measurement lasts `HSMCA_BENCH_SECONDS` seconds (default 3) after a warm-up. The table
//! goes to stdout and into `docs/performance.md`, between the `hsm_pool` markers.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use hsmca::hsm::{Hsm, HsmConfig, HsmKey, KeyType, PoolConfig, SignatureAlgorithm, SignerPool};
use secrecy::SecretString;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN_LABEL: &str = "hsmca-bench";
const KEY_LABEL: &str = "bench-p256";
const WORKER_COUNTS: [usize; 4] = [1, 2, 4, 8];
/// Concurrent callers per pool session: a loaded service has many more requests in flight
/// than sessions, enough that a worker finds the next job waiting when it finishes one.
const CALLERS_PER_SESSION: usize = 16;
const WARM_UP: Duration = Duration::from_secs(1);
/// Alternating raw/pool measurements per worker count.
const ROUNDS: usize = 3;
const BEGIN_MARKER: &str = "<!-- hsm_pool:begin -->";
const END_MARKER: &str = "<!-- hsm_pool:end -->";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, workers, pin_file, seconds] = &args[..]
        && flag == "--raw"
    {
        let rate = raw_rate(
            workers.parse().expect("worker count"),
            Path::new(pin_file),
            Duration::from_secs_f64(seconds.parse().expect("seconds")),
        );
        println!("{rate}");
        return;
    }

    let dir = tempfile::tempdir().expect("temporary directory");
    // SAFETY: the process is still single-threaded here; SoftHSM2 reads SOFTHSM2_CONF when the
    // module is initialised below, and the raw-measurement children inherit it.
    unsafe { std::env::set_var("SOFTHSM2_CONF", dir.path().join("softhsm2.conf")) };
    run(&dir.path().join("user.pin"), measurement_duration());
}

/// The duration of one measurement: `HSMCA_BENCH_SECONDS` (fractions allowed), default 3 s.
fn measurement_duration() -> Duration {
    std::env::var("HSMCA_BENCH_SECONDS").map_or(Duration::from_secs(3), |s| {
        Duration::from_secs_f64(s.parse().expect("HSMCA_BENCH_SECONDS: a number of seconds"))
    })
}

fn run(pin_file: &Path, duration: Duration) {
    let token_dir = pin_file.parent().expect("token directory");
    let status = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("softhsm/new-token.sh"))
        .arg(token_dir)
        .arg(TOKEN_LABEL)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run softhsm/new-token.sh");
    assert!(status.success(), "softhsm/new-token.sh failed");

    let hsm = Hsm::open(&HsmConfig {
        module: MODULE.into(),
        token_label: Some(TOKEN_LABEL.into()),
        token_serial: None,
        pin_file: Some(pin_file.into()),
        pin_env: None,
        pool: PoolConfig::default(),
    })
    .expect("open the bench token");
    let key = hsm
        .generate_key(KEY_LABEL, KeyType::EcdsaP256)
        .expect("generate the P-256 key");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    // Rates on a small VM swing by tens of percent from one second to the next, so raw and
    // pool alternate over several rounds and each cell reports the median and the range.
    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); WORKER_COUNTS.len()];
    for round in 1..=ROUNDS {
        for (cell, workers) in samples.iter_mut().zip(WORKER_COUNTS) {
            cell.0.push(raw_rate_in_child(workers, pin_file, duration));
            let pool = hsm
                .start_pool(&PoolConfig {
                    sessions: Some(workers),
                    ..PoolConfig::default()
                })
                .expect("start the pool");
            cell.1
                .push(runtime.block_on(pool_rate(Arc::new(pool), &key, workers, duration)));
            eprintln!("round {round}/{ROUNDS}, {workers} workers done");
        }
    }

    let table = table(&samples);
    println!("{table}");
    write_report(&table, duration);
}

/// Runs [`raw_rate`] in a child process (this binary with `--raw`), which initialises its own
/// PKCS#11 module and logs in on its own.
fn raw_rate_in_child(workers: usize, pin_file: &Path, duration: Duration) -> f64 {
    let output = Command::new(std::env::current_exe().expect("bench executable"))
        .arg("--raw")
        .arg(workers.to_string())
        .arg(pin_file)
        .arg(duration.as_secs_f64().to_string())
        .output()
        .expect("run the raw measurement");
    assert!(
        output.status.success(),
        "raw measurement failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("raw rate")
}

/// Signatures per second from `workers` threads, each signing on its own session in a loop.
fn raw_rate(workers: usize, pin_file: &Path, duration: Duration) -> f64 {
    let pkcs11 = Pkcs11::new(MODULE).expect("load the module");
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = pkcs11
        .get_slots_with_initialized_token()
        .expect("slots")
        .into_iter()
        .find(|&slot| {
            pkcs11
                .get_token_info(slot)
                .is_ok_and(|i| i.label() == TOKEN_LABEL)
        })
        .expect("the bench token");
    let pin = SecretString::from(std::fs::read_to_string(pin_file).expect("read the PIN"));
    let sessions: Vec<_> = (0..workers)
        .map(|_| pkcs11.open_ro_session(slot).expect("open a session"))
        .collect();
    // Login is per application: the first one counts for every session.
    sessions[0]
        .login(UserType::User, Some(&pin))
        .expect("log in");
    let digest = [0x5a; 32];
    let start = Barrier::new(workers);
    let signed: u64 = std::thread::scope(|scope| {
        let threads: Vec<_> = sessions
            .into_iter()
            .map(|session| {
                let start = &start;
                scope.spawn(move || {
                    let key = session
                        .find_objects(&[
                            Attribute::Class(ObjectClass::PRIVATE_KEY),
                            Attribute::Label(KEY_LABEL.into()),
                        ])
                        .expect("find the key")[0];
                    start.wait();
                    count_until_done(duration, || {
                        session
                            .sign(&Mechanism::Ecdsa, key, &digest)
                            .expect("C_Sign");
                    })
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("raw worker"))
            .sum()
    });
    signed as f64 / duration.as_secs_f64()
}

/// Signatures per second through `pool` from `CALLERS_PER_SESSION`×`sessions` async callers.
async fn pool_rate(
    pool: Arc<SignerPool>,
    key: &HsmKey,
    sessions: usize,
    duration: Duration,
) -> f64 {
    let callers: Vec<_> = (0..sessions * CALLERS_PER_SESSION)
        .map(|_| {
            let (pool, key) = (pool.clone(), key.clone());
            tokio::spawn(async move {
                let message = b"hsm_pool benchmark message".to_vec();
                let (warm, end) = deadlines(duration);
                let mut signed = 0;
                while Instant::now() < end {
                    pool.sign(&key, SignatureAlgorithm::EcdsaP256Sha256, message.clone())
                        .await
                        .expect("pool signature");
                    if Instant::now() >= warm {
                        signed += 1;
                    }
                }
                signed
            })
        })
        .collect();
    let mut signed: u64 = 0;
    for caller in callers {
        signed += caller.await.expect("pool caller");
    }
    signed as f64 / duration.as_secs_f64()
}

/// Calls `sign` through the warm-up and `duration`; returns how many calls ended after the
/// warm-up.
fn count_until_done(duration: Duration, mut sign: impl FnMut()) -> u64 {
    let (warm, end) = deadlines(duration);
    let mut signed = 0;
    while Instant::now() < end {
        sign();
        if Instant::now() >= warm {
            signed += 1;
        }
    }
    signed
}

/// When the warm-up ends and when the measurement ends, from now.
fn deadlines(duration: Duration) -> (Instant, Instant) {
    let warm = Instant::now() + WARM_UP;
    (warm, warm + duration)
}

/// Median and range of each cell; the ratio is of the medians.
fn table(samples: &[(Vec<f64>, Vec<f64>)]) -> String {
    let mut table = String::from(
        "| workers | raw sig/s (median, range) | pool sig/s (median, range) | pool/raw |\n\
         |--:|--:|--:|--:|\n",
    );
    for (workers, (raw, pool)) in WORKER_COUNTS.iter().zip(samples) {
        let (raw, pool) = (summary(raw), summary(pool));
        table += &format!(
            "| {workers} | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | {:.1} % |\n",
            raw.0,
            raw.1,
            raw.2,
            pool.0,
            pool.1,
            pool.2,
            100.0 * pool.0 / raw.0
        );
    }
    table
}

/// (median, min, max) of a non-empty sample.
fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
    )
}

/// Replaces the `hsm_pool` section of `docs/performance.md`, creating the file if needed.
fn write_report(table: &str, duration: Duration) {
    let section = format!(
        "{BEGIN_MARKER}\n\
         ## HSM session pool: ECDSA P-256 signing\n\n\
         Raw `C_Sign` loop (one session per OS thread) against `SignerPool` with the same number \
         of sessions, driven by {CALLERS_PER_SESSION} async callers per session. Target: the \
         pool delivers at least 90 % of the raw rate.\n\n\
         - Machine: {cores} cores, {cpu}, {memory} memory\n\
         - SoftHSM: {softhsm}\n\
         - Command: `cargo bench --bench hsm_pool`\n\
         - Date: {date}\n\
         - Measurement: {ROUNDS} alternating rounds of {seconds} s per cell after a {warm_up} s \
         warm-up\n\n\
         {table}{END_MARKER}",
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu = proc_field("/proc/cpuinfo", "model name"),
        memory = memory(),
        softhsm = command_output("softhsm2-util", &["--version"]),
        date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        seconds = duration.as_secs_f64(),
        warm_up = WARM_UP.as_secs_f64(),
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/performance.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        format!(
            "# Performance\n\nMeasured figures for hsmca, each section written by the benchmark \
             it names. Re-run the command shown to refresh a section.\n\n\
             {BEGIN_MARKER}\n{END_MARKER}\n"
        )
    });
    let new = match (old.find(BEGIN_MARKER), old.find(END_MARKER)) {
        (Some(begin), Some(end)) if begin < end => {
            format!(
                "{}{section}{}",
                &old[..begin],
                &old[end + END_MARKER.len()..]
            )
        }
        _ => format!("{}\n{section}\n", old.trim_end()),
    };
    std::fs::create_dir_all(path.parent().expect("docs directory")).expect("create docs/");
    std::fs::write(&path, new).expect("write docs/performance.md");
    println!("wrote {}", path.display());
}

/// The value of the first `field: value` line of a `/proc` file.
fn proc_field(file: &str, field: &str) -> String {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == field).then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Total memory in GiB, from `/proc/meminfo`.
fn memory() -> String {
    let total = proc_field("/proc/meminfo", "MemTotal");
    match total
        .strip_suffix(" kB")
        .and_then(|kb| kb.parse::<f64>().ok())
    {
        Some(kb) => format!("{:.1} GiB", kb / (1024.0 * 1024.0)),
        None => total,
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({program}: {e})"))
}
