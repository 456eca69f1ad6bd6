//! The client side: an mTLS HTTP/1.1 client for the API, and `hsmca request`, which makes a
//! new CA key on this machine, has it certified, and writes the files a mesh loads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::tls::{read_certificates, read_private_key};

/// An API answer.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, when sent.
    pub retry_after: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "the server answered {} with a body that is not JSON: {e}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// An API client: the server's address and the TLS identity to present.
#[derive(Clone)]
pub struct Client {
    host: String,
    port: u16,
    connector: TlsConnector,
}

impl Client {
    /// A client for `server` (`https://host:port`) presenting `certificate` and `key`, and
    /// trusting only the CA certificates in `ca` for the server.
    pub fn new(server: &str, certificate: &Path, key: &Path, ca: &Path) -> Result<Self, String> {
        let authority = server
            .strip_prefix("https://")
            .ok_or_else(|| format!("--server {server:?} must start with https://"))?
            .trim_end_matches('/');
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("--server {server:?} has a bad port"))?,
            ),
            None => (authority, 443),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let mut roots = rustls::RootCertStore::empty();
        for certificate in read_certificates(ca, "--ca")? {
            roots.add(certificate).map_err(|e| format!("--ca: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                read_certificates(certificate, "--cert")?,
                read_private_key(key, "--key")?,
            )
            .map_err(|e| format!("--cert and --key: {e}"))?;
        Ok(Client {
            host,
            port,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Sends one request on a new connection and reads the whole answer.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Response, String> {
        let headers: Vec<(&str, &str)> = content_type
            .map(|value| ("content-type", value))
            .into_iter()
            .collect();
        self.send_with_headers(method, path, &headers, body).await
    }

    /// Opens one keep-alive connection (TLS handshake, HTTP/1.1) for many requests, as the
    /// load generator uses; one-off requests go through [`Client::send_with_headers`].
    pub async fn connect(&self) -> Result<Connection, String> {
        let (sender, driver) = self.open(true).await?;
        Ok(Connection {
            sender,
            driver,
            host: format!("{}:{}", self.host, self.port),
        })
    }

    /// TCP, TLS and the HTTP/1.1 handshake; the connection is driven by a spawned task.
    /// `nodelay` is for the load generator's keep-alive connections; one-off requests keep
    /// the socket's default.
    async fn open(
        &self,
        nodelay: bool,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<Full<Bytes>>,
            tokio::task::JoinHandle<Result<(), hyper::Error>>,
        ),
        String,
    > {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", self.host, self.port))?;
        if nodelay {
            let _ = stream.set_nodelay(true);
        }
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| format!("bad server name {:?}: {e}", self.host))?;
        let tls = self
            .connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS with {}:{} failed: {e}", self.host, self.port))?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP handshake failed: {e}"))?;
        Ok((sender, tokio::spawn(connection)))
    }

    /// Sends one request with `headers` on a new connection and reads the whole answer.
    pub async fn send_with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Response, String> {
        let (mut sender, driver) = self.open(false).await?;
        let host = format!("{}:{}", self.host, self.port);
        let request = build_request(&host, method, path, headers, body)?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            // The connection's own error says why (a TLS alert, say); the request's only that
            // it was cancelled.
            Err(error) => {
                let cause = match driver.await {
                    Ok(Err(connection_error)) => with_sources(&connection_error),
                    _ => with_sources(&error),
                };
                return Err(format!("the request failed: {cause}"));
            }
        };
        let answer = read_response(response).await;
        driver.abort();
        answer
    }

    /// `POST /v1/sign`.
    pub async fn sign(
        &self,
        csr_pem: &str,
        profile: &str,
        ttl: Option<&str>,
    ) -> Result<Response, String> {
        let mut request = json!({ "csr": csr_pem, "profile": profile });
        if let Some(ttl) = ttl {
            request["ttl"] = json!(ttl);
        }
        self.send(
            "POST",
            "/v1/sign",
            Some("application/json"),
            request.to_string().into_bytes(),
        )
        .await
    }
}

/// An HTTP/1.1 request for `host` with `headers` and `body`.
fn build_request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<hyper::Request<Full<Bytes>>, String> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())
}

/// Reads a whole answer: status, `Retry-After` and body.
async fn read_response(
    response: hyper::Response<hyper::body::Incoming>,
) -> Result<Response, String> {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer failed: {e}"))?
        .to_bytes()
        .to_vec();
    Ok(Response {
        status,
        retry_after,
        body,
    })
}

/// An error and its sources, outermost first.
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One keep-alive HTTP/1.1 connection to the appliance; requests go one after another.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<Result<(), hyper::Error>>,
    host: String,
}

impl Connection {
    /// Sends a request and reads the whole answer; the connection stays open for the next.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Response, String> {
        let request = build_request(&self.host, method, path, headers, body)?;
        let response = match self.sender.send_request(request).await {
            Ok(response) => response,
            // The connection's own error says why (a TLS alert, say); the request's only that
            // it was cancelled.
            Err(error) => {
                let cause =
                    match tokio::time::timeout(std::time::Duration::from_secs(1), &mut self.driver)
                        .await
                    {
                        Ok(Ok(Err(connection_error))) => with_sources(&connection_error),
                        _ => with_sources(&error),
                    };
                return Err(format!("the request failed: {cause}"));
            }
        };
        read_response(response).await
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The files `hsmca request` writes, named as the consuming system expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// `key.pem`, `cert.pem`, `chain.pem` (cert and intermediates), `roots.pem`.
    Plain,
    /// Istio's `cacerts` secret: `ca-key.pem`, `ca-cert.pem`, `cert-chain.pem` (cert,
    /// intermediates and root), `root-cert.pem`.
    Istio,
    /// Linkerd's identity issuer: `issuer.key`, `issuer.crt` (cert and intermediates),
    /// `ca.crt` (trust anchors).
    Linkerd,
}

/// Key types `hsmca request` can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RequestKeyType {
    /// ECDSA P-256: accepted by SPIRE, Istio and Linkerd.
    EcdsaP256,
    /// ECDSA P-384 (not for Linkerd).
    EcdsaP384,
    /// RSA 2048 (not for Linkerd).
    Rsa2048,
    /// RSA 3072 (not for Linkerd).
    Rsa3072,
    /// RSA 4096 (not for Linkerd).
    Rsa4096,
}

/// What `hsmca request` needs.
pub struct RequestOptions {
    /// The profile to ask for.
    pub profile: String,
    /// The SPIFFE trust domain the new CA serves.
    pub trust_domain: String,
    /// The subject CN (a layout-specific default when absent).
    pub common_name: Option<String>,
    /// The lifetime to ask for; the profile's default when absent.
    pub ttl: Option<String>,
    /// The key to make.
    pub key_type: RequestKeyType,
    /// Which files to write.
    pub layout: Layout,
    /// Where to write them; existing files are never overwritten.
    pub out_dir: PathBuf,
}

/// Makes the key, asks for the certificate, writes the files; returns what was written.
pub async fn request(client: &Client, options: &RequestOptions) -> Result<Vec<PathBuf>, String> {
    let names = file_names(options.layout);
    std::fs::create_dir_all(&options.out_dir)
        .map_err(|e| format!("cannot create {}: {e}", options.out_dir.display()))?;
    let paths: Vec<PathBuf> = names.iter().map(|n| options.out_dir.join(n)).collect();
    if let Some(existing) = paths.iter().find(|p| p.exists()) {
        return Err(format!(
            "{} already exists: hsmca request never overwrites a key or certificate; use a new --out-dir",
            existing.display()
        ));
    }
    if options.layout == Layout::Linkerd && options.key_type != RequestKeyType::EcdsaP256 {
        return Err("Linkerd's issuer key must be ecdsa-p256".into());
    }
    let key = generate_key(options.key_type)?;
    let common_name = options
        .common_name
        .clone()
        .unwrap_or_else(|| match options.layout {
            Layout::Linkerd => "identity.linkerd.cluster.local".into(),
            _ => format!("{} issuing CA", options.trust_domain),
        });
    let csr = csr_pem(&key, &options.trust_domain, &common_name)?;
    let response = client
        .sign(&csr, &options.profile, options.ttl.as_deref())
        .await?;
    let answer = response.json()?;
    if response.status != 200 {
        let code = answer["error"]["code"].as_str().unwrap_or("?");
        let message = answer["error"]["message"].as_str().unwrap_or("?");
        return Err(format!(
            "the server refused ({} {code}): {message}",
            response.status
        ));
    }
    let field = |name: &str| {
        answer[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("the answer lacks {name}"))
    };
    let (certificate, chain, roots) = (field("certificate")?, field("chain")?, field("roots")?);
    let contents: Vec<String> = match options.layout {
        Layout::Plain => vec![key.serialize_pem(), certificate, chain, roots],
        Layout::Istio => {
            let root = issuing_root(&chain, &roots)?;
            vec![
                key.serialize_pem(),
                certificate,
                format!("{chain}{root}"),
                roots,
            ]
        }
        Layout::Linkerd => vec![key.serialize_pem(), chain, roots],
    };
    for (index, (path, content)) in paths.iter().zip(&contents).enumerate() {
        // The key is written first, 0600, so it is never readable by others, not even briefly.
        let mode = if index == 0 {
            crate::files::PRIVATE
        } else {
            crate::files::PUBLIC
        };
        crate::files::create_new_file(path, content.as_bytes(), mode)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    }
    Ok(paths)
}

fn file_names(layout: Layout) -> &'static [&'static str] {
    match layout {
        Layout::Plain => &["key.pem", "cert.pem", "chain.pem", "roots.pem"],
        Layout::Istio => &[
            "ca-key.pem",
            "ca-cert.pem",
            "cert-chain.pem",
            "root-cert.pem",
        ],
        Layout::Linkerd => &["issuer.key", "issuer.crt", "ca.crt"],
    }
}

fn generate_key(key_type: RequestKeyType) -> Result<rcgen::KeyPair, String> {
    use rcgen::{KeyPair, RsaKeySize};
    let rsa = |size| KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size);
    match key_type {
        RequestKeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        RequestKeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        RequestKeyType::Rsa2048 => rsa(RsaKeySize::_2048),
        RequestKeyType::Rsa3072 => rsa(RsaKeySize::_3072),
        RequestKeyType::Rsa4096 => rsa(RsaKeySize::_4096),
    }
    .map_err(|e| format!("cannot generate the key: {e}"))
}

/// A CSR for an issuing CA of `trust_domain`: `O=SPIFFE`, the CN, URI SAN
/// `spiffe://<trust domain>`. The server decides the CA extensions; the CSR asks for none.
fn csr_pem(key: &rcgen::KeyPair, trust_domain: &str, common_name: &str) -> Result<String, String> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "SPIFFE");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let uri = format!("spiffe://{trust_domain}");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        uri.clone()
            .try_into()
            .map_err(|_| format!("{uri} is not a valid URI"))?,
    )];
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(|e| format!("cannot make the CSR: {e}"))
}

/// The root, among `roots`, that issued the top of `chain`.
fn issuing_root(chain: &str, roots: &str) -> Result<String, String> {
    let parse = |pem: &str| -> Result<Vec<x509_cert::Certificate>, String> {
        x509_cert::Certificate::load_pem_chain(pem.as_bytes()).map_err(|e| e.to_string())
    };
    let top = parse(chain)?.pop().ok_or("the answer's chain is empty")?;
    let root = parse(roots)?
        .into_iter()
        .find(|root| root.tbs_certificate.subject == top.tbs_certificate.issuer)
        .ok_or("no root in the answer issued its chain")?;
    let der = der::Encode::to_der(&root).map_err(|e| e.to_string())?;
    Ok(crate::pki::to_pem("CERTIFICATE", &der))
}
