//! What `hsmca hsm info` shows: module, tokens, mechanisms and keys with their security
//! attributes. Secret material is never requested, so it cannot be shown.

use std::fmt;
use std::path::PathBuf;

use cryptoki::object::{Attribute, AttributeType};
use cryptoki::session::Session;

use super::error::HsmError;
use super::token::{TokenContext, TokenDescription};

/// The inventory of the module and the selected token.
#[derive(Clone, Debug)]
pub struct Inventory {
    /// The module's path.
    pub module: PathBuf,
    /// Manufacturer, description and version of the library.
    pub library: String,
    /// Every initialised token the module offers.
    pub tokens: Vec<TokenDescription>,
    /// The token hsmca is configured to use.
    pub selected: TokenDescription,
    /// Mechanisms the selected token supports, by PKCS#11 name.
    pub mechanisms: Vec<String>,
    /// Key objects on the selected token.
    pub keys: Vec<KeyObject>,
}

/// A key object and its security-relevant attributes.
#[derive(Clone, Debug)]
pub struct KeyObject {
    /// `CKO_PRIVATE_KEY`, `CKO_PUBLIC_KEY`, ...
    pub class: String,
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID` in hex.
    pub id: String,
    /// `CKK_EC`, `CKK_RSA`, ...
    pub key_type: String,
    /// Boolean attributes the object has, by name (`CKA_SENSITIVE` → "sensitive").
    pub flags: Vec<(&'static str, bool)>,
}

const FLAG_ATTRIBUTES: [(AttributeType, &str); 13] = [
    (AttributeType::Token, "token"),
    (AttributeType::Private, "private"),
    (AttributeType::Sensitive, "sensitive"),
    (AttributeType::AlwaysSensitive, "always-sensitive"),
    (AttributeType::Extractable, "extractable"),
    (AttributeType::NeverExtractable, "never-extractable"),
    (AttributeType::Local, "local"),
    (AttributeType::Sign, "sign"),
    (AttributeType::Verify, "verify"),
    (AttributeType::Decrypt, "decrypt"),
    (AttributeType::Encrypt, "encrypt"),
    (AttributeType::Derive, "derive"),
    (AttributeType::Unwrap, "unwrap"),
];

/// The inventory around `keys` (from [`key_objects`]), read from the current module.
pub(crate) fn inventory(
    context: &TokenContext,
    module: &super::token::Module,
    module_path: PathBuf,
    keys: Vec<KeyObject>,
) -> Result<Inventory, HsmError> {
    let pkcs11 = &module.pkcs11;
    let library = pkcs11.get_library_info()?;
    let tokens = super::token::initialized_tokens(pkcs11, &module_path)?
        .into_iter()
        .map(|(_, description)| description)
        .collect();
    let mut mechanisms: Vec<String> = pkcs11
        .get_mechanism_list(module.slot)?
        .iter()
        .map(ToString::to_string)
        .collect();
    mechanisms.sort();
    Ok(Inventory {
        module: module_path,
        library: format!(
            "{} {} (library {}, PKCS#11 {})",
            library.manufacturer_id(),
            library.library_description(),
            library.library_version(),
            library.cryptoki_version()
        ),
        tokens,
        selected: context.description.clone(),
        mechanisms,
        keys,
    })
}

/// Every object on the token with its class, label, id, type and security flags.
pub(crate) fn key_objects(session: &Session) -> Result<Vec<KeyObject>, HsmError> {
    let mut keys = Vec::new();
    for handle in session.find_objects(&[])? {
        let mut wanted = vec![
            AttributeType::Class,
            AttributeType::Label,
            AttributeType::Id,
            AttributeType::KeyType,
        ];
        wanted.extend(FLAG_ATTRIBUTES.iter().map(|(t, _)| *t));
        let mut key = KeyObject {
            class: String::new(),
            label: String::new(),
            id: String::new(),
            key_type: String::new(),
            flags: Vec::new(),
        };
        for attribute in session.get_attributes(handle, &wanted)? {
            let flag_name = FLAG_ATTRIBUTES
                .iter()
                .find(|(t, _)| *t == attribute.attribute_type())
                .map(|(_, name)| *name);
            match (attribute, flag_name) {
                (Attribute::Class(class), _) => key.class = class.to_string(),
                (Attribute::Label(label), _) => key.label = String::from_utf8_lossy(&label).into(),
                (Attribute::Id(id), _) => key.id = hex::encode(id),
                (Attribute::KeyType(t), _) => key.key_type = t.to_string(),
                (
                    Attribute::Token(value)
                    | Attribute::Private(value)
                    | Attribute::Sensitive(value)
                    | Attribute::AlwaysSensitive(value)
                    | Attribute::Extractable(value)
                    | Attribute::NeverExtractable(value)
                    | Attribute::Local(value)
                    | Attribute::Sign(value)
                    | Attribute::Verify(value)
                    | Attribute::Decrypt(value)
                    | Attribute::Encrypt(value)
                    | Attribute::Derive(value)
                    | Attribute::Unwrap(value),
                    Some(name),
                ) => key.flags.push((name, value)),
                _ => {}
            }
        }
        if !key.key_type.is_empty() {
            keys.push(key);
        }
    }
    keys.sort_by(|a, b| (&a.label, &a.class).cmp(&(&b.label, &b.class)));
    Ok(keys)
}

impl fmt::Display for Inventory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "module:   {}", self.module.display())?;
        writeln!(f, "library:  {}", self.library)?;
        writeln!(f, "tokens:")?;
        for token in &self.tokens {
            let marker = if token.serial == self.selected.serial {
                "*"
            } else {
                " "
            };
            writeln!(
                f,
                "  {marker} slot {:#x}: \"{}\" serial {} model {} ({})",
                token.slot_id, token.label, token.serial, token.model, token.manufacturer
            )?;
        }
        writeln!(f, "mechanisms of \"{}\":", self.selected.label)?;
        for chunk in self.mechanisms.chunks(4) {
            writeln!(f, "    {}", chunk.join(", "))?;
        }
        writeln!(
            f,
            "keys on \"{}\": {}",
            self.selected.label,
            self.keys.len()
        )?;
        for key in &self.keys {
            let flags: Vec<String> = key
                .flags
                .iter()
                .map(|(name, value)| {
                    if *value {
                        name.to_string()
                    } else {
                        format!("!{name}")
                    }
                })
                .collect();
            writeln!(
                f,
                "    {} \"{}\" id {} {}\n        {}",
                key.class,
                key.label,
                key.id,
                key.key_type,
                flags.join(" ")
            )?;
        }
        Ok(())
    }
}
