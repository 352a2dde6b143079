//! A small JSON client for the admin API, on the hyper already in the tree.

use anyhow::{Context as _, anyhow, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mailfleet_runtime::Config;

use crate::token::client_token;

pub struct AdminClient {
    base: String,
    token: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    pub fn new(url: Option<&str>, config: &Config) -> anyhow::Result<AdminClient> {
        let base = match url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://{}", config.listen.admin),
        };
        if !base.starts_with("http://") {
            bail!("admin URL {base:?} must start with http://");
        }
        Ok(AdminClient {
            base,
            token: client_token(&config.data_dir)?,
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.send(Method::DELETE, path, None).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{}", self.base, path);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))?;
        let response = self
            .http
            .request(request)
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let value: serde_json::Value = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body)
                .map_err(|_| anyhow!("{status}: {}", String::from_utf8_lossy(&body)))?
        };
        if !status.is_success() {
            let message = value["error"].as_str().unwrap_or("request failed");
            bail!("{message} ({status})");
        }
        Ok(value)
    }
}
