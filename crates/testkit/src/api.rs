//! A client of the gateway's API, as the gateway's and the end-to-end tests call it.

use reqwest::{Client, Method, Response};
use serde_json::Value;

/// The gateway's API at `base`; every call sends `X-API-Key`.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    pub client: Client,
}

impl Api {
    pub fn new(base: String) -> Self {
        Self {
            base,
            client: crate::http_client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, method: Method, path: &str, key: &str, body: Option<&Value>) -> Response {
        let mut request = self
            .client
            .request(method.clone(), self.url(path))
            .header("X-API-Key", key);
        if let Some(body) = body {
            request = request.json(body);
        }
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn get(&self, path: &str, key: &str) -> Response {
        self.send(Method::GET, path, key, None).await
    }

    /// `GET` that must answer 200; its JSON body.
    pub async fn get_json(&self, path: &str, key: &str) -> Value {
        let response = self.get(path, key).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("a JSON body")
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Response {
        self.send(Method::POST, path, key, Some(body)).await
    }

    pub async fn patch(&self, path: &str, key: &str, body: &Value) -> Response {
        self.send(Method::PATCH, path, key, Some(body)).await
    }

    pub async fn delete(&self, path: &str, key: &str) -> Response {
        self.send(Method::DELETE, path, key, None).await
    }
}
