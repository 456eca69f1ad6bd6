//! How `[hsm]` names the token to use.

/// How a token is chosen among the module's slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// By token label.
    Label(String),
    /// By token serial number.
    Serial(String),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(label) => write!(f, "label \"{label}\""),
            TokenSelector::Serial(serial) => write!(f, "serial \"{serial}\""),
        }
    }
}
