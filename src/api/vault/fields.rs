//! Request fields as Vault reads them: strings or numbers, booleans as `true` or `"true"`,
//! lists as JSON arrays or comma-joined strings, TTLs as seconds or Go durations
//! (`2160h0m0s`), empty strings meaning "not given". What an endpoint does not read comes
//! back as Vault's warning.

use serde_json::{Map, Value};

use crate::duration::Seconds;

/// The fields of one request body, taken one by one.
pub struct Fields {
    remaining: Map<String, Value>,
}

impl Fields {
    /// Parses a body; an empty body has no fields.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Fields {
                remaining: Map::new(),
            });
        }
        match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => Ok(Fields { remaining: map }),
            Ok(_) => Err("the request body must be a JSON object".into()),
            Err(e) => Err(format!("failed to parse JSON input: {e}")),
        }
    }

    /// A string field; numbers and booleans are taken as their text; "" is absent.
    pub fn string(&mut self, name: &str) -> Result<Option<String>, String> {
        match self.remaining.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(_) => Err(format!("field {name} must be a string")),
        }
    }

    /// A boolean: `true`, `"true"`, `"1"`, ...
    pub fn boolean(&mut self, name: &str) -> Result<Option<bool>, String> {
        match self.remaining.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "true" | "1" | "t" => Ok(Some(true)),
                "false" | "0" | "f" => Ok(Some(false)),
                _ => Err(format!("field {name}: {s:?} is not a boolean")),
            },
            Some(Value::Number(n)) => Ok(Some(n.as_u64() != Some(0))),
            Some(_) => Err(format!("field {name} must be a boolean")),
        }
    }

    /// A list: a JSON array of strings or one comma-joined string; empty entries dropped.
    pub fn list(&mut self, name: &str) -> Result<Vec<String>, String> {
        let items: Vec<String> = match self.remaining.remove(name) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.split(',').map(str::to_owned).collect(),
            Some(Value::Array(values)) => values
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(format!("field {name} must be a list of strings")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => Err(format!("field {name} must be a list"))?,
        };
        Ok(items
            .into_iter()
            .map(|item| item.trim().to_owned())
            .filter(|item| !item.is_empty())
            .collect())
    }

    /// A TTL: seconds (number or text) or a Go duration such as `2160h0m0s`; "" is absent.
    pub fn ttl(&mut self, name: &str) -> Result<Option<Seconds>, String> {
        match self.string(name)? {
            None => Ok(None),
            Some(text) => Seconds::parse(&text)
                .map(Some)
                .map_err(|e| format!("field {name}: {e}")),
        }
    }

    /// Drops fields the endpoint accepts without using (they do not become warnings).
    pub fn ignore(&mut self, names: &[&str]) {
        for name in names {
            self.remaining.remove(*name);
        }
    }

    /// Vault's warning for the fields nobody took, if any.
    pub fn warnings(self) -> Option<Vec<String>> {
        if self.remaining.is_empty() {
            None
        } else {
            let names: Vec<&str> = self.remaining.keys().map(String::as_str).collect();
            Some(vec![format!(
                "Endpoint ignored these unrecognized parameters: [{}]",
                names.join(" ")
            )])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_field_forms_are_read_as_vault_reads_them() {
        let mut f = Fields::parse(
            br#"{"common_name":"","exclude_cn_from_sans":"true","uri_sans":"spiffe://a, spiffe://b",
                 "alt_names":["x.example",""],"ttl":"2160h0m0s","n":3600,"junk":1,"other":"x"}"#,
        )
        .unwrap();
        assert_eq!(f.string("common_name").unwrap(), None);
        assert_eq!(f.boolean("exclude_cn_from_sans").unwrap(), Some(true));
        assert_eq!(
            f.list("uri_sans").unwrap(),
            vec!["spiffe://a", "spiffe://b"]
        );
        assert_eq!(f.list("alt_names").unwrap(), vec!["x.example"]);
        assert_eq!(f.ttl("ttl").unwrap(), Some(Seconds(2160 * 3600)));
        assert_eq!(f.ttl("n").unwrap(), Some(Seconds(3600)));
        f.ignore(&["other"]);
        assert_eq!(
            f.warnings().unwrap(),
            vec!["Endpoint ignored these unrecognized parameters: [junk]"]
        );
        assert!(Fields::parse(b"").unwrap().warnings().is_none());
        assert!(Fields::parse(b"[1]").is_err());
    }
}
