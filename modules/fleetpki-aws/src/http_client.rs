//! The SDK's HTTP client, with its TLS connector built at the first `https://` request.
//!
//! The SDK's default client builds its TLS connector, and so loads the system's trust store
//! (the CA bundle and every file of the certificate directory), when an SDK client is made:
//! about 2.5 ms of CPU in every node module run, even when every call goes to an `http://`
//! endpoint (a local queue server, a test). This client is the default one for `https://`
//! (rustls with aws-lc, the native roots, the proxy from the environment) and the same connector
//! with an empty trust store for `http://`, which it sends in the clear as the default one does;
//! each is built at its first request. Whom `https://` trusts does not change.

use std::borrow::Cow;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use aws_smithy_async::rt::sleep::SharedAsyncSleep;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_http_client::Connector;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_runtime_api::shared::IntoShared;
use aws_smithy_types::config_bag::ConfigBag;

/// The HTTP client every SDK client of the modules uses (set in `load_config`).
pub fn http_client() -> SharedHttpClient {
    TlsWhenNeeded::default().into_shared()
}

/// One connector per distinct timeouts, as the SDK's own client keeps them: each connector holds
/// its connection pools, so it is made once, not per request.
#[derive(Debug, Default)]
struct TlsWhenNeeded {
    connectors: Mutex<Vec<(Timeouts, SharedHttpConnector)>>,
}

type Timeouts = (Option<Duration>, Option<Duration>);

impl HttpClient for TlsWhenNeeded {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        let mut connectors = self
            .connectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, connector)) = connectors.iter().find(|(k, _)| *k == key) {
            return connector.clone();
        }
        let connector = SchemeConnector::new(settings.clone(), components.sleep_impl());
        let connector = SharedHttpConnector::new(connector);
        connectors.push((key, connector.clone()));
        connector
    }

    // The default client's check builds its connector here, to load the trust store early; this
    // one leaves that to the first https:// request.
    fn validate_base_client_config(
        &self,
        _: &RuntimeComponentsBuilder,
        _: &ConfigBag,
    ) -> Result<(), BoxError> {
        Ok(())
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        Some(ConnectorMetadata::new("hyper", Some(Cow::Borrowed("1.x"))))
    }
}

/// Sends each request through the plain or the TLS connector, by the request's scheme.
#[derive(Debug)]
struct SchemeConnector {
    settings: HttpConnectorSettings,
    sleep: Option<SharedAsyncSleep>,
    /// Whether `http://` may go without TLS: not through an `https://` proxy. Read from the
    /// environment once, as the connectors read their proxy.
    plain_allowed: bool,
    plain: OnceLock<Connector>,
    tls: OnceLock<Connector>,
}

impl SchemeConnector {
    fn new(settings: HttpConnectorSettings, sleep: Option<SharedAsyncSleep>) -> Self {
        Self {
            settings,
            sleep,
            plain_allowed: !proxy_needs_tls(|name| std::env::var(name).ok()),
            plain: OnceLock::new(),
            tls: OnceLock::new(),
        }
    }

    /// The connector a request to `uri` goes through.
    fn for_uri(&self, uri: &str) -> &Connector {
        if self.plain_allowed && is_plain_http(uri) {
            // The same connector type as the TLS one (so no second copy of its code in every
            // binary), trusting nothing: it never makes a TLS connection. (The context's build
            // cannot fail; were it to, the default context would only cost the load back.)
            self.plain.get_or_init(|| {
                let nothing = TlsContext::builder()
                    .with_trust_store(TrustStore::empty())
                    .build()
                    .unwrap_or_default();
                self.rustls(nothing)
            })
        } else {
            self.tls.get_or_init(|| self.rustls(TlsContext::default()))
        }
    }

    /// The default client's connector: the same settings, sleep and proxy, rustls with aws-lc,
    /// `trust` (the default context: the system's trust store).
    fn rustls(&self, trust: TlsContext) -> Connector {
        let mut builder = Connector::builder();
        builder
            .set_connector_settings(Some(self.settings.clone()))
            .set_sleep_impl(self.sleep.clone())
            // As the default client does from behaviour version 2025-08-07 (load_config asks
            // for the latest).
            .set_proxy_config(Some(ProxyConfig::from_env()));
        builder
            .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(trust)
            .build()
    }
}

impl HttpConnector for SchemeConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        self.for_uri(request.uri()).call(request)
    }
}

fn is_plain_http(uri: &str) -> bool {
    uri.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
}

/// Whether a proxy from the environment is reached over TLS (an `https://` proxy URL): a plain
/// request through it then needs the TLS connector too, as it would with the default client.
fn proxy_needs_tls(var: impl Fn(&str) -> Option<String>) -> bool {
    ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .into_iter()
        .filter_map(var)
        .any(|url| is_https(url.trim()))
}

fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_types::body::SdkBody;
    use std::io::{Read, Write};

    #[test]
    fn the_scheme_decides_the_connector() {
        assert!(is_plain_http("http://127.0.0.1:9324/queue"));
        assert!(is_plain_http("HTTP://localhost/"));
        assert!(!is_plain_http("https://sqs.eu-west-1.amazonaws.com/"));
        assert!(!is_plain_http("http:/x"));
        assert!(!is_plain_http(""));
    }

    #[test]
    fn a_proxy_reached_over_tls_keeps_plain_requests_on_the_tls_connector() {
        // The one variable set, to that value.
        let with = |name: &'static str, value: &'static str| {
            proxy_needs_tls(move |n: &str| (n == name).then(|| value.to_string()))
        };
        assert!(!proxy_needs_tls(|_: &str| None));
        assert!(!with("HTTP_PROXY", "http://proxy:3128"));
        // An https:// request's proxy is the TLS connector's business anyway.
        assert!(!with("HTTPS_PROXY", "https://proxy:3128"));
        assert!(with("http_proxy", "https://proxy:3128"));
        assert!(with("ALL_PROXY", " HTTPS://proxy:3128"));
    }

    /// A plain request is answered through the plain connector, and the TLS one (whose making
    /// loads the trust store) is never made; an https:// request makes it.
    #[test]
    fn a_plain_request_never_makes_the_tls_connector() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let answer = std::thread::spawn(move || {
            let (mut stream, _) = server.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .unwrap();
        });
        let connector = SchemeConnector::new(HttpConnectorSettings::default(), None);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut request = HttpRequest::new(SdkBody::empty());
        request
            .set_uri(format!("http://127.0.0.1:{port}/"))
            .unwrap();
        let response = runtime
            .block_on(connector.call(request))
            .expect("the plain request is answered");
        assert_eq!(response.status().as_u16(), 200);
        answer.join().unwrap();
        assert!(connector.plain.get().is_some());
        assert!(
            connector.tls.get().is_none(),
            "a plain request made the TLS connector"
        );

        let _ = connector.for_uri("https://sqs.eu-west-1.amazonaws.com/");
        assert!(connector.tls.get().is_some());
    }
}
