//! The control file: which intercepted calls fail, slow down or hang.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use cryptoki_sys::{
    CK_RV, CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED, CKR_GENERAL_ERROR, CKR_SESSION_HANDLE_INVALID,
    CKR_USER_NOT_LOGGED_IN,
};

/// What a rule does to a call.
#[derive(Clone, Debug, PartialEq)]
enum Action {
    /// Return this error without calling the real module.
    Fail(CK_RV, &'static str),
    /// Wait, then forward.
    Delay(Duration),
    /// Block until the control file changes, then decide again.
    Hang,
}

#[derive(Debug)]
struct Rule {
    /// A PKCS#11 function name, or `*` for all intercepted ones.
    function: String,
    action: Action,
    /// Calls left, if limited.
    remaining: Option<u64>,
}

/// The rules of the control file's current content.
struct State {
    content: String,
    rules: Vec<Rule>,
}

static STATE: Mutex<State> = Mutex::new(State {
    content: String::new(),
    rules: Vec::new(),
});

/// How often a hung call looks at the control file.
const HANG_POLL: Duration = Duration::from_millis(10);

fn control_file() -> Option<PathBuf> {
    std::env::var_os("HSMCA_FAULTS").map(PathBuf::from)
}

fn read_control(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Called before `function` is forwarded: `Some(rv)` to return `rv` instead, `None` to
/// forward (possibly after a delay or a hang).
pub(crate) fn before(function: &str) -> Option<CK_RV> {
    let path = control_file()?;
    loop {
        let content = read_control(&path);
        let action = {
            let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
            if state.content != content {
                state.rules = parse(&content, &path);
                state.content = content.clone();
            }
            let rule = state.rules.iter_mut().find(|rule| {
                (rule.function == "*" || rule.function == function) && rule.remaining != Some(0)
            })?;
            if let Some(remaining) = rule.remaining.as_mut() {
                *remaining -= 1;
            }
            rule.action.clone()
        };
        match action {
            Action::Fail(rv, name) => {
                record(&path, &format!("{function} {name}"));
                return Some(rv);
            }
            Action::Delay(delay) => {
                record(&path, &format!("{function} delay"));
                std::thread::sleep(delay);
                return None;
            }
            Action::Hang => {
                record(&path, &format!("{function} hang"));
                while read_control(&path) == content {
                    std::thread::sleep(HANG_POLL);
                }
            }
        }
    }
}

/// Appends one line to the injection log next to the control file.
fn record(control: &Path, line: &str) {
    let mut log = control.to_path_buf().into_os_string();
    log.push(".log");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        // One write, so lines of calls injected at once on several threads never interleave.
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

/// Parses the rules; a line that does not parse is reported in the log and ignored.
fn parse(content: &str, control: &Path) -> Vec<Rule> {
    let mut rules = Vec::new();
    for line in content.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        match parse_rule(line) {
            Ok(rule) => rules.push(rule),
            Err(why) => record(control, &format!("bad rule {line:?}: {why}")),
        }
    }
    rules
}

fn parse_rule(line: &str) -> Result<Rule, String> {
    let mut words = line.split_whitespace();
    let function = words.next().ok_or("empty rule")?.to_owned();
    let action = match words.next().ok_or("no action")? {
        "hang" => Action::Hang,
        word => {
            if let Some(delay) = word.strip_prefix("delay=") {
                let millis = delay
                    .strip_suffix("ms")
                    .and_then(|ms| ms.parse().ok())
                    .ok_or("delay must be like delay=50ms")?;
                Action::Delay(Duration::from_millis(millis))
            } else {
                let (rv, name) =
                    error_code(word).ok_or_else(|| format!("unknown action {word}"))?;
                Action::Fail(rv, name)
            }
        }
    };
    let mut remaining = None;
    for word in words {
        let times = word
            .strip_prefix("times=")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("unknown option {word}"))?;
        remaining = Some(times);
    }
    Ok(Rule {
        function,
        action,
        remaining,
    })
}

fn error_code(name: &str) -> Option<(CK_RV, &'static str)> {
    [
        (CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR"),
        (CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED"),
        (CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID"),
        (CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN"),
        (CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR"),
    ]
    .into_iter()
    .find(|(_, known)| *known == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_with_options_and_comments() {
        let rules = parse(
            "C_Sign CKR_DEVICE_ERROR times=2 # two\n\n* delay=5ms\nC_Login hang\nC_Sign explode\n",
            Path::new("/nonexistent/control"),
        );
        assert_eq!(rules.len(), 3, "the unknown action is dropped");
        assert_eq!(rules[0].function, "C_Sign");
        assert_eq!(
            rules[0].action,
            Action::Fail(CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR")
        );
        assert_eq!(rules[0].remaining, Some(2));
        assert_eq!(rules[1].action, Action::Delay(Duration::from_millis(5)));
        assert_eq!(rules[2].action, Action::Hang);
        assert!(parse_rule("C_Sign delay=5s").is_err());
        assert!(parse_rule("C_Sign CKR_DEVICE_ERROR twice").is_err());
    }
}
