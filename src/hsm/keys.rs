//! Key pairs on the token: generation with safe attributes, lookup by label and public key.

use std::sync::Arc;

use cryptoki::error::RvError;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::algorithm::{KeyType, SignatureAlgorithm};
use super::error::HsmError;
use super::public_key::{PublicKey, ec_params};

/// Length of the random `CKA_ID` given to generated keys.
const KEY_ID_LEN: usize = 16;

/// A key pair on the token, found by label and checked against its public key.
///
/// Cheap to clone: the pool's jobs carry it.
#[derive(Clone, Debug)]
pub struct HsmKey(Arc<KeyData>);

#[derive(Debug)]
struct KeyData {
    label: String,
    id: Vec<u8>,
    public_key: PublicKey,
}

impl HsmKey {
    /// The key's `CKA_LABEL`.
    pub fn label(&self) -> &str {
        &self.0.label
    }

    /// The key's `CKA_ID`.
    pub fn id(&self) -> &[u8] {
        &self.0.id
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        self.0.public_key.key_type()
    }

    /// The public half, read from the token.
    pub fn public_key(&self) -> &PublicKey {
        &self.0.public_key
    }
}

/// Generates a key pair. The private key is a token object that is private, sensitive,
/// never extractable and can only sign; the public key can only verify.
///
/// `state_public_usage`: ask for CKA_VERIFY and CKA_ENCRYPT on the public key. Modules that
/// derive them from the private key's usage (tpm2-pkcs11) refuse that, and get a template
/// without them; another module that refuses them is asked again without.
pub(crate) fn generate(
    session: &Session,
    label: &str,
    key_type: KeyType,
    state_public_usage: bool,
) -> Result<HsmKey, HsmError> {
    if !session
        .find_objects(&[Attribute::Label(label.into())])?
        .is_empty()
    {
        return Err(HsmError::KeyLabelExists {
            label: label.into(),
        });
    }
    let id = session.generate_random_vec(KEY_ID_LEN as u32)?;
    let common = |extra: Vec<Attribute>| {
        let mut template = vec![
            Attribute::Token(true),
            Attribute::Label(label.into()),
            Attribute::Id(id.clone()),
        ];
        template.extend(extra);
        template
    };
    // CKA_VERIFY and CKA_ENCRYPT are asked for on the public key where the module lets us;
    // some derive them from the private key's usage instead and refuse any other value
    // (below).
    let mut public_template = common(vec![Attribute::Private(false), Attribute::Wrap(false)]);
    let mut private_template = common(vec![
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ]);
    if let Some(params) = ec_params(key_type) {
        public_template.push(Attribute::EcParams(params));
    }
    if let Some(bits) = key_type.rsa_bits() {
        public_template.push(Attribute::ModulusBits(bits.into()));
        public_template.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
        // Keep RSA private keys out of CKM_RSA_PKCS decryption oracles.
        private_template.push(Attribute::SignRecover(false));
    }
    let mechanism = key_type.generation_mechanism();
    let mut with_usage = public_template.clone();
    with_usage.extend([Attribute::Verify(true), Attribute::Encrypt(false)]);
    let first = if state_public_usage {
        session.generate_key_pair(&mechanism, &with_usage, &private_template)
    } else {
        session.generate_key_pair(&mechanism, &public_template, &private_template)
    };
    let (public, private) = match first {
        Ok(pair) => pair,
        // tpm2-pkcs11 maps usage onto the TPM key's sign and decrypt bits and derives the
        // public key's CKA_VERIFY and CKA_ENCRYPT from them, failing a template that states
        // them otherwise (CKR_GENERAL_ERROR, "attr mismatch" in its log). The private key's
        // template, which makes the key sign-only, stays as it is.
        Err(cryptoki::error::Error::Pkcs11(
            RvError::GeneralError | RvError::TemplateInconsistent | RvError::AttributeValueInvalid,
            _,
        )) if state_public_usage => {
            tracing::info!(%label, "the module refused CKA_VERIFY/CKA_ENCRYPT on the public key; generating without them (the module sets the public key's usage)");
            session.generate_key_pair(&mechanism, &public_template, &private_template)?
        }
        Err(other) => return Err(other.into()),
    };
    check_private_key(session, private, label)?;
    let public_key = read_public_key(session, public, label)?;
    Ok(HsmKey(Arc::new(KeyData {
        label: label.into(),
        id,
        public_key,
    })))
}

/// Reads back what the module made of the private key's template: sensitive, never
/// extractable, able to sign and nothing else. A module that silently dropped one of these is
/// refused, and the key destroyed, rather than used.
fn check_private_key(
    session: &Session,
    private: ObjectHandle,
    label: &str,
) -> Result<(), HsmError> {
    let wanted = [
        (AttributeType::Sensitive, true),
        (AttributeType::Extractable, false),
        (AttributeType::Sign, true),
        (AttributeType::Decrypt, false),
        (AttributeType::Unwrap, false),
        (AttributeType::Derive, false),
    ];
    let types: Vec<AttributeType> = wanted.iter().map(|(kind, _)| *kind).collect();
    let found = session.get_attributes(private, &types)?;
    let value = |kind: AttributeType| {
        found.iter().find_map(|attribute| match (kind, attribute) {
            (AttributeType::Sensitive, Attribute::Sensitive(v))
            | (AttributeType::Extractable, Attribute::Extractable(v))
            | (AttributeType::Sign, Attribute::Sign(v))
            | (AttributeType::Decrypt, Attribute::Decrypt(v))
            | (AttributeType::Unwrap, Attribute::Unwrap(v))
            | (AttributeType::Derive, Attribute::Derive(v)) => Some(*v),
            _ => None,
        })
    };
    let wrong: Vec<String> = wanted
        .iter()
        .filter(|(kind, expected)| value(*kind) != Some(*expected))
        .map(|(kind, expected)| format!("{kind} is not {expected}"))
        .collect();
    if wrong.is_empty() {
        return Ok(());
    }
    let _ = session.destroy_object(private);
    Err(HsmError::UnsafeKey {
        label: label.into(),
        reason: wrong.join(", "),
    })
}

/// Finds the key pair labelled `label`. When `expected` is given, the token's public key must
/// be that key. The private key must be the one and only private key with that label, and its
/// public key object must share its `CKA_ID`.
pub(crate) fn find(
    session: &Session,
    label: &str,
    expected: Option<&PublicKey>,
) -> Result<HsmKey, HsmError> {
    let private = find_one_private(session, label, None)?;
    let id = match session.get_attributes(private, &[AttributeType::Id])?.pop() {
        Some(Attribute::Id(id)) => id,
        _ => Vec::new(),
    };
    let publics = session.find_objects(&[
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Label(label.into()),
        Attribute::Id(id.clone()),
    ])?;
    let [public] = publics[..] else {
        return Err(HsmError::MalformedPublicKey {
            label: label.into(),
            reason: format!(
                "expected one public key object with the private key's label and CKA_ID, found {}",
                publics.len()
            ),
        });
    };
    let public_key = read_public_key(session, public, label)?;
    if expected.is_some_and(|expected| *expected != public_key) {
        return Err(HsmError::PublicKeyMismatch {
            label: label.into(),
        });
    }
    Ok(HsmKey(Arc::new(KeyData {
        label: label.into(),
        id,
        public_key,
    })))
}

/// Proves that the private key signs for the public key: a random challenge is signed in the
/// HSM with `algorithm` and verified on the host.
pub(crate) fn self_test(
    session: &Session,
    key: &HsmKey,
    algorithm: SignatureAlgorithm,
) -> Result<(), HsmError> {
    let challenge = session.generate_random_vec(32)?;
    let handle = private_handle(session, key)?;
    let signature = sign(session, handle, algorithm, &challenge)?;
    if key.public_key().verify(algorithm, &challenge, &signature) {
        Ok(())
    } else {
        Err(HsmError::KeyPairMismatch {
            label: key.label().into(),
        })
    }
}

/// The private key object of `key` in this session.
pub(crate) fn private_handle(session: &Session, key: &HsmKey) -> Result<ObjectHandle, HsmError> {
    find_one_private(session, key.label(), Some(key.id()))
}

/// Signs `message` with the private key `handle`, returning the X.509 encoding.
pub(crate) fn sign(
    session: &Session,
    handle: ObjectHandle,
    algorithm: SignatureAlgorithm,
    message: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let (mechanism, input) = algorithm.mechanism_and_input(message);
    let raw = session.sign(&mechanism, handle, &input)?;
    Ok(algorithm.encode_signature(raw)?)
}

/// The one private key labelled `label` (and with CKA_ID `id`, when given).
fn find_one_private(
    session: &Session,
    label: &str,
    id: Option<&[u8]>,
) -> Result<ObjectHandle, HsmError> {
    let mut template = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Label(label.into()),
    ];
    template.extend(id.map(|id| Attribute::Id(id.to_vec())));
    let handles = session.find_objects(&template)?;
    match handles[..] {
        [handle] => Ok(handle),
        [] => Err(HsmError::KeyNotFound {
            label: label.into(),
        }),
        _ => Err(HsmError::KeyAmbiguous {
            label: label.into(),
            count: handles.len(),
        }),
    }
}

fn read_public_key(
    session: &Session,
    public: ObjectHandle,
    label: &str,
) -> Result<PublicKey, HsmError> {
    let malformed = |reason: String| HsmError::MalformedPublicKey {
        label: label.into(),
        reason,
    };
    let attributes = session.get_attributes(
        public,
        &[
            AttributeType::KeyType,
            AttributeType::EcParams,
            AttributeType::EcPoint,
            AttributeType::Modulus,
            AttributeType::PublicExponent,
        ],
    )?;
    let (mut ck_type, mut params, mut point, mut modulus, mut exponent) =
        (None, None, None, None, None);
    for attribute in attributes {
        match attribute {
            Attribute::KeyType(t) => ck_type = Some(t),
            Attribute::EcParams(v) => params = Some(v),
            Attribute::EcPoint(v) => point = Some(v),
            Attribute::Modulus(v) => modulus = Some(v),
            Attribute::PublicExponent(v) => exponent = Some(v),
            _ => {}
        }
    }
    match (ck_type, params, point, modulus, exponent) {
        (Some(CkKeyType::EC | CkKeyType::EC_EDWARDS), Some(params), Some(point), _, _) => {
            PublicKey::from_ec_attributes(&params, &point).map_err(malformed)
        }
        (Some(CkKeyType::RSA), _, _, Some(modulus), Some(exponent)) => {
            PublicKey::from_rsa_attributes(&modulus, &exponent).map_err(malformed)
        }
        (Some(other), ..) => Err(malformed(format!("unsupported key type {other}"))),
        (None, ..) => Err(malformed(
            "the public key object has no CKA_KEY_TYPE".into(),
        )),
    }
}
