//! What the officer sees: each step as it happens, and a spinner while the HSM works on
//! something slow such as an RSA-4096 key.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Step-by-step output on standard output.
pub struct Progress {
    interactive: bool,
}

impl Progress {
    /// Progress on standard output; the spinner only animates on a terminal.
    pub fn stdout() -> Self {
        Progress {
            interactive: std::io::stdout().is_terminal(),
        }
    }

    /// A finished step.
    pub fn done(&self, message: impl AsRef<str>) {
        println!("  [ok] {}", message.as_ref());
    }

    /// A heading or a plain line.
    pub fn say(&self, message: impl AsRef<str>) {
        println!("{}", message.as_ref());
    }

    /// Runs `work` while showing `message` with a spinner and the elapsed time, then reports
    /// how long it took, or that it failed.
    pub fn spin<T, E>(&self, message: &str, work: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let started = Instant::now();
        let stop = AtomicBool::new(false);
        let result = std::thread::scope(|scope| {
            if self.interactive {
                scope.spawn(|| {
                    const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
                    let mut frame = 0;
                    while !stop.load(Ordering::Acquire) {
                        print!(
                            "\r  [{}] {message} ({}s)",
                            FRAMES[frame % 4],
                            started.elapsed().as_secs()
                        );
                        let _ = std::io::stdout().flush();
                        frame += 1;
                        std::thread::sleep(Duration::from_millis(120));
                    }
                    print!("\r\x1b[2K");
                });
            } else {
                println!("  [..] {message}");
            }
            let result = work();
            stop.store(true, Ordering::Release);
            result
        });
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => self.done(format!("{message}: done in {seconds:.1} s")),
            Err(_) => println!("  [!!] {message}: failed after {seconds:.1} s"),
        }
        result
    }
}
