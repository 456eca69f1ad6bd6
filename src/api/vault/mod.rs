//! The Vault PKI-compatible subset, so that SPIRE's `vault` UpstreamAuthority, cert-manager's
//! Vault issuer and hvac work with configuration only. The same policy, profiles, HSM, ledger
//! and audit log stand behind it as behind the native API; only the dialect differs: Vault's
//! paths, field forms, token auth, response envelope and `{"errors": [...]}`.

mod fields;
mod state;
mod tokens;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use x509_cert::name::Name;

use self::fields::Fields;
pub use self::state::VaultState;
use self::tokens::{TokenInfo, TokenRefusal, TokenStore};
use super::body::{csr_bytes, pem_response, read_body};
use super::crl::unix_now;
use super::error::{ApiError, Disclosure};
use super::identity::ClientIdentity;
use super::service::Service;
use super::settings::{IssuerState, Settings};
use super::signing::{self, RequestContext, Signed};
use crate::duration::Seconds;
use crate::ledger::certificates::{CertificateFilter, normalize_serial};
use crate::pki::SubjectSpec;

/// The Vault routes for `mount`.
pub fn routes(mount: &str) -> Router<Arc<Service>> {
    let pki = |path: &str| format!("/v1/{mount}/{path}");
    Router::new()
        .route("/v1/sys/health", get(health))
        .route("/v1/auth/cert/login", post(cert_login).put(cert_login))
        .route("/v1/auth/token/lookup-self", get(lookup_self))
        .route(
            "/v1/auth/token/renew-self",
            post(renew_self).put(renew_self),
        )
        .route(
            &pki("root/sign-intermediate"),
            post(sign_intermediate).put(sign_intermediate),
        )
        .route(&pki("sign/{role}"), post(sign_role).put(sign_role))
        .route(&pki("ca/pem"), get(ca_pem))
        .route(&pki("ca"), get(ca_der))
        .route(&pki("ca_chain"), get(ca_chain))
        .route(&pki("cert/{serial}"), get(cert))
        .route(&pki("certs"), any(list_certs))
}

fn vault(service: &Service) -> &VaultState {
    service
        .vault
        .as_ref()
        .expect("Vault routes exist only with [vault]")
}

/// Vault's success envelope.
fn envelope(data: Value, auth: Value, warnings: Option<Vec<String>>) -> Response {
    Json(json!({
        "request_id": tokens::request_id(),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": warnings,
        "auth": auth,
    }))
    .into_response()
}

/// Vault's error shape: `{"errors": [...]}`, with the status of the refusal. A refused
/// token is only ever "permission denied", whatever the reason was (the audit log keeps it).
fn vault_error(error: ApiError) -> Response {
    let message = match error.disclosure {
        Disclosure::PermissionDenied => "permission denied".to_owned(),
        Disclosure::RateLimited => "rate limit quota exceeded".to_owned(),
        Disclosure::Full => error.message,
    };
    let mut response = (error.status, Json(json!({ "errors": [message] }))).into_response();
    if let Some(retry) = error.retry_after {
        let seconds = retry.as_secs().max(1).to_string();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            seconds.parse().expect("digits are a valid header"),
        );
    }
    response
}

fn bad_request(message: String) -> ApiError {
    ApiError::bad_request("bad_request", message)
}

/// The token of a request: `X-Vault-Token`, or `Authorization: Bearer`.
fn token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
}

/// The token's holder, checked against the connection's client identity.
async fn authenticate(
    service: &Service,
    identity: &str,
    headers: &HeaderMap,
) -> Result<TokenInfo, ApiError> {
    vault(service)
        .tokens
        .check(token(headers), identity)
        .await
        .map_err(token_refused)
}

/// A refused token: 403 "permission denied", or 429 once the identity has presented too many
/// bad tokens. The message beyond what Vault says reaches only the audit log.
fn token_refused(refusal: TokenRefusal) -> ApiError {
    match refusal {
        TokenRefusal::TooManyFailures { retry_after } => ApiError {
            retry_after: Some(retry_after),
            disclosure: Disclosure::RateLimited,
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "token_rate_limited",
                format!("rate limit quota exceeded: {refusal}"),
            )
        },
        // Not the client's fault, and not a guess: answered like the ledger's other outages.
        TokenRefusal::Unavailable(reason) => ApiError::unavailable(
            "ledger_unavailable",
            format!("the Vault token cannot be checked: {reason}"),
            std::time::Duration::from_secs(5),
        ),
        refusal => permission_denied(format!("permission denied: {refusal}")),
    }
}

/// A 403 that Vault answers as "permission denied"; `message` reaches only the audit log.
fn permission_denied(message: String) -> ApiError {
    ApiError {
        disclosure: Disclosure::PermissionDenied,
        ..ApiError::new(StatusCode::FORBIDDEN, "permission_denied", message)
    }
}

async fn health() -> Response {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    Json(json!({
        "initialized": true,
        "sealed": false,
        "standby": false,
        "performance_standby": false,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": now,
        "version": concat!("1.15.0+hsmca-", env!("CARGO_PKG_VERSION")),
        "cluster_name": "hsmca",
        "cluster_id": "hsmca",
    }))
    .into_response()
}

/// The `auth` block Vault answers logins and renewals with.
fn auth_block(token: Option<&str>, info: &TokenInfo, client: &str) -> Value {
    json!({
        "client_token": token.unwrap_or(""),
        "accessor": info.accessor,
        "policies": ["default", client],
        "token_policies": ["default", client],
        "metadata": { "identity": info.identity },
        "lease_duration": TokenStore::remaining(info),
        "renewable": info.expires.is_some(),
        "entity_id": "",
        "token_type": "service",
        "orphan": true,
    })
}

/// `auth/cert/login`: the connection's client certificate, if its identity has a
/// `[[clients]]` entry, is exchanged for a token bound to that identity.
async fn cert_login(
    State(service): State<Arc<Service>>,
    Extension(identity): Extension<ClientIdentity>,
) -> Response {
    let actor = identity.actor();
    let settings = service.settings();
    let client = match signing::client(&settings, &identity) {
        Ok((_, client)) => client,
        Err(error) => {
            let audited = service
                .audit(
                    "vault.login.refused",
                    &actor,
                    json!({ "message": error.message }),
                )
                .await;
            return vault_error(
                audited
                    .err()
                    .unwrap_or_else(|| permission_denied(error.message)),
            );
        }
    };
    let (token, info) = match vault(&service).tokens.issue(&actor).await {
        Ok(issued) => issued,
        Err(error) => {
            return vault_error(ApiError::unavailable(
                "ledger_unavailable",
                format!("no token was issued: {error}"),
                std::time::Duration::from_secs(5),
            ));
        }
    };
    if let Err(error) = service
        .audit(
            "vault.login",
            &actor,
            json!({ "client": client.name, "accessor": info.accessor }),
        )
        .await
    {
        return vault_error(error);
    }
    envelope(
        Value::Null,
        auth_block(Some(&token), &info, &client.name),
        None,
    )
}

/// `auth/token/lookup-self`.
async fn lookup_self(
    State(service): State<Arc<Service>>,
    Extension(identity): Extension<ClientIdentity>,
    headers: HeaderMap,
) -> Response {
    let settings = service.settings();
    let result = match signing::client(&settings, &identity) {
        Ok((id, client)) => authenticate(&service, id, &headers)
            .await
            .map(|info| (info, client)),
        Err(error) => Err(error),
    };
    match result {
        Ok((info, client)) => {
            let rfc3339 = |at: SystemTime| {
                der::DateTime::from_system_time(at)
                    .map(|t| t.to_string())
                    .unwrap_or_default()
            };
            envelope(
                json!({
                    "accessor": info.accessor,
                    "creation_time": info.issued.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default(),
                    "creation_ttl": vault(&service).config.token_ttl.0,
                    "display_name": format!("cert-{}", client.name),
                    "entity_id": "",
                    "expire_time": info.expires.map(rfc3339),
                    "explicit_max_ttl": 0,
                    "id": token(&headers).unwrap_or_default(),
                    "issue_time": rfc3339(info.issued),
                    "meta": { "identity": info.identity },
                    "num_uses": 0,
                    "orphan": true,
                    "path": "auth/cert/login",
                    "policies": ["default", client.name],
                    "renewable": info.expires.is_some(),
                    "ttl": TokenStore::remaining(&info),
                    "type": "service",
                }),
                Value::Null,
                None,
            )
        }
        Err(error) => vault_error(error),
    }
}

/// `auth/token/renew-self` `{increment?}`.
async fn renew_self(
    State(service): State<Arc<Service>>,
    Extension(identity): Extension<ClientIdentity>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let settings = service.settings();
        let (id, client) = signing::client(&settings, &identity)?;
        let body = read_body(&service.server, &headers, body).await?;
        let mut fields = Fields::parse(&body).map_err(bad_request)?;
        let increment = fields.ttl("increment").map_err(bad_request)?;
        let token = token(&headers).unwrap_or_default();
        let info = vault(&service)
            .tokens
            .renew(token, id, increment)
            .await
            .map_err(token_refused)?;
        service
            .audit(
                "vault.renew",
                id,
                json!({ "client": client.name, "accessor": info.accessor }),
            )
            .await?;
        Ok::<_, ApiError>(auth_block(Some(token), &info, &client.name))
    }
    .await;
    match result {
        Ok(auth) => envelope(Value::Null, auth, None),
        Err(error) => vault_error(error),
    }
}

/// Which Vault signing endpoint.
enum Endpoint {
    /// `root/sign-intermediate`: the sign-intermediate profile; `ca_chain` starts with the
    /// new certificate.
    SignIntermediate,
    /// `sign/<role>`: the role's profile.
    SignRole(String),
}

async fn sign_intermediate(
    State(service): State<Arc<Service>>,
    Extension(identity): Extension<ClientIdentity>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    vault_sign(
        &service,
        &identity,
        &headers,
        body,
        Endpoint::SignIntermediate,
    )
    .await
}

async fn sign_role(
    State(service): State<Arc<Service>>,
    Extension(identity): Extension<ClientIdentity>,
    Path(role): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    vault_sign(
        &service,
        &identity,
        &headers,
        body,
        Endpoint::SignRole(role),
    )
    .await
}

/// Fields every signing endpoint accepts and hsmca ignores: the profile decides them.
const IGNORED_FIELDS: [&str; 8] = [
    "private_key_format",
    "max_path_length",
    "signature_bits",
    "use_pss",
    "issuer_ref",
    "not_before_duration",
    "use_csr_values",
    "key_usage",
];

async fn vault_sign(
    service: &Service,
    identity: &ClientIdentity,
    headers: &HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Response {
    let started = Instant::now();
    let settings = service.settings();
    let mut context = RequestContext::new(identity);
    let mut warnings = None;
    let result = async {
        let (id, client) = signing::client(&settings, identity)?;
        authenticate(service, id, headers).await?;
        let vault = vault(service);
        let profile = match &endpoint {
            Endpoint::SignIntermediate => vault.config.sign_intermediate_profile.clone(),
            Endpoint::SignRole(role) => vault.config.roles.get(role).cloned().ok_or_else(|| {
                ApiError::bad_request("unknown_role", format!("unknown role: {role}"))
            })?,
        };
        let body = read_body(&service.server, headers, body).await?;
        let mut fields = Fields::parse(&body).map_err(bad_request)?;
        let csr = fields
            .string("csr")
            .map_err(bad_request)?
            .ok_or_else(|| bad_request("missing csr".into()))?;
        context.describe(&profile, csr.as_bytes());
        let (overrides, ttl) = sign_options(&mut fields, &endpoint)?;
        warnings = fields.warnings();
        let csr = csr_bytes(&csr)?;
        let request = signing::Request {
            profile: &profile,
            csr: &csr,
            ttl,
            overrides,
        };
        signing::sign(service, &settings, id, client, &request, &context).await
    }
    .await;
    match signing::conclude(service, &settings, &context, result, started).await {
        Ok(signed) => envelope(sign_data(&signed, &endpoint), Value::Null, warnings),
        Err(error) => vault_error(error),
    }
}

/// Everything but the CSR that a Vault signing body asks for, read as `endpoint` reads it;
/// `fields` keeps the unknown fields for the warnings.
fn sign_options(
    fields: &mut Fields,
    endpoint: &Endpoint,
) -> Result<(signing::Overrides, Option<Seconds>), ApiError> {
    let overrides = overrides(fields, endpoint)?;
    let ttl = fields.ttl("ttl").map_err(bad_request)?;
    if fields
        .string("format")
        .map_err(bad_request)?
        .is_some_and(|f| f != "pem")
    {
        return Err(bad_request("only format \"pem\" is supported".into()));
    }
    fields.ignore(&IGNORED_FIELDS);
    Ok((overrides, ttl))
}

/// Fuzzing entry point (`tests/fuzz`): decodes `body` as both signing endpoints do.
#[cfg(fuzzing)]
pub fn decode_sign_body(body: &[u8]) {
    for endpoint in [
        Endpoint::SignIntermediate,
        Endpoint::SignRole("workload".into()),
    ] {
        if let Ok(mut fields) = Fields::parse(body) {
            let _ = fields.string("csr");
            if sign_options(&mut fields, &endpoint).is_ok() {
                let _ = fields.warnings();
            }
        }
    }
}

/// The names the Vault fields ask for. `sign-intermediate` takes its subject from
/// `common_name`, `organization`, `ou`, `country`, `locality`, `province` and `serial_number`
/// when any is given (the CSR's otherwise); `sign/<role>` takes `common_name` as the CN and,
/// unless `exclude_cn_from_sans`, as a DNS name, with `alt_names`. `uri_sans`, when given,
/// replace the CSR's. IP and other SANs are refused: no profile issues them.
fn overrides(fields: &mut Fields, endpoint: &Endpoint) -> Result<signing::Overrides, ApiError> {
    for unsupported in ["ip_sans", "other_sans"] {
        if !fields.list(unsupported).map_err(bad_request)?.is_empty() {
            return Err(bad_request(format!(
                "{unsupported} are not supported: no hsmca profile issues them"
            )));
        }
    }
    let uri_sans = fields.list("uri_sans").map_err(bad_request)?;
    let common_name = fields.string("common_name").map_err(bad_request)?;
    let exclude_cn = fields
        .boolean("exclude_cn_from_sans")
        .map_err(bad_request)?
        .unwrap_or(false);
    let alt_names = fields.list("alt_names").map_err(bad_request)?;
    let spec = SubjectSpec {
        country: fields.string("country").map_err(bad_request)?,
        state_or_province: fields.string("province").map_err(bad_request)?,
        locality: fields.string("locality").map_err(bad_request)?,
        organization: fields.string("organization").map_err(bad_request)?,
        organizational_unit: fields.string("ou").map_err(bad_request)?,
        common_name: common_name.clone(),
        serial_number: fields.string("serial_number").map_err(bad_request)?,
    };
    let subject: Option<Name> = if spec == SubjectSpec::default() {
        None
    } else {
        Some(
            spec.to_name()
                .map_err(|e| ApiError::bad_request("subject_not_allowed", e.to_string()))?,
        )
    };
    let dns_sans = match endpoint {
        Endpoint::SignIntermediate if !alt_names.is_empty() => {
            return Err(bad_request(
                "alt_names are not allowed on an intermediate CA".into(),
            ));
        }
        Endpoint::SignIntermediate => None,
        Endpoint::SignRole(_) => {
            let mut names = alt_names;
            if let Some(cn) = common_name.filter(|_| !exclude_cn) {
                names.insert(0, cn);
            }
            Some(names).filter(|names| !names.is_empty())
        }
    };
    Ok(signing::Overrides {
        uri_sans: Some(uri_sans).filter(|uris| !uris.is_empty()),
        dns_sans,
        subject,
    })
}

/// `data` of a signing answer. PEM strings carry no trailing newline, as Vault's, and every
/// `ca_chain` entry is byte-identical to `certificate` or `issuing_ca`.
fn sign_data(signed: &Signed, endpoint: &Endpoint) -> Value {
    let trim = |pem: &str| pem.trim_end().to_owned();
    let certificate = trim(&signed.pem);
    let issuer_chain: Vec<String> = signed.issuer_path.iter().map(|pem| trim(pem)).collect();
    let ca_chain: Vec<String> = match endpoint {
        Endpoint::SignIntermediate => std::iter::once(certificate.clone())
            .chain(issuer_chain.iter().cloned())
            .collect(),
        Endpoint::SignRole(_) => issuer_chain.clone(),
    };
    let serial_number = vault_serial(&signed.serial);
    json!({
        "certificate": certificate,
        "issuing_ca": issuer_chain.first().cloned().unwrap_or_default(),
        "ca_chain": ca_chain,
        "serial_number": serial_number,
        "expiration": signed.not_after,
    })
}

/// The issuer behind the mount: the sign-intermediate profile's.
fn mount_issuer<'s>(service: &Service, settings: &'s Settings) -> &'s IssuerState {
    let profile = &settings.profiles[&vault(service).config.sign_intermediate_profile];
    &settings.issuers[&profile.issuer]
}

async fn ca_pem(State(service): State<Arc<Service>>) -> Response {
    let settings = service.settings();
    pem_response(mount_issuer(&service, &settings).certificate.to_pem())
}

async fn ca_der(State(service): State<Arc<Service>>) -> Response {
    let settings = service.settings();
    (
        [(header::CONTENT_TYPE, "application/pkix-cert")],
        mount_issuer(&service, &settings).certificate.der().to_vec(),
    )
        .into_response()
}

async fn ca_chain(State(service): State<Arc<Service>>) -> Response {
    let settings = service.settings();
    let issuer = mount_issuer(&service, &settings);
    pem_response(issuer.path_pem.concat())
}

/// `LIST certs` (or `GET certs?list=true`), hvac's `list_certificates`: the serials, in
/// Vault's colon-separated form, of the certificates issued to the token's identity; never
/// another client's.
async fn list_certs(
    State(service): State<Arc<Service>>,
    Extension(identity): Extension<ClientIdentity>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let listing = method.as_str() == "LIST"
        || (method == Method::GET
            && uri
                .query()
                .is_some_and(|query| query.split('&').any(|pair| pair == "list=true")));
    if !listing {
        return vault_error(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "certs answers LIST (or GET with list=true)",
        ));
    }
    let settings = service.settings();
    let holder = match signing::client(&settings, &identity) {
        Ok((id, _)) => authenticate(&service, id, &headers).await,
        Err(error) => Err(error),
    };
    let info = match holder {
        Ok(info) => info,
        Err(error) => return vault_error(error),
    };
    let filter = CertificateFilter {
        client: Some(info.identity.clone()),
        ..CertificateFilter::default()
    };
    match service.ledger.list(filter, unix_now()).await {
        Ok(listed) => {
            let keys: Vec<String> = listed
                .iter()
                .map(|certificate| vault_serial(&certificate.serial))
                .collect();
            envelope(json!({ "keys": keys }), Value::Null, None)
        }
        Err(error) => vault_error(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ledger",
            error.to_string(),
        )),
    }
}

/// A serial as Vault writes it: lower-case hex bytes separated by colons.
fn vault_serial(serial: &str) -> String {
    serial
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// `cert/<serial>`: a certificate from the ledger; the serial as hex, with or without `:`
/// or `-` separators.
async fn cert(State(service): State<Arc<Service>>, Path(serial): Path<String>) -> Response {
    let normalized = normalize_serial(&serial);
    let found = service.ledger.find(normalized).await;
    match found {
        Ok(Some(row)) => envelope(
            json!({
                "certificate": crate::pki::to_pem("CERTIFICATE", &row.der).trim_end(),
                "revocation_time": 0,
            }),
            Value::Null,
            None,
        ),
        Ok(None) => (StatusCode::NOT_FOUND, Json(json!({ "errors": [] }))).into_response(),
        Err(error) => vault_error(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ledger",
            error.to_string(),
        )),
    }
}
