//! The Prometheus scrape endpoint (`OTEL_METRICS_EXPORTER=prometheus`):
//! `GET /metrics` answers the text exposition of everything the process's
//! meters hold, collected at scrape time. Everything else is 404.
//!
//! A pull endpoint, so that a Prometheus server (the deployed one, or the
//! operations rehearsal's) reads the same series with the same names
//! wherever it runs, and so that a process that stops answering is an
//! absent target (`up == 0`), which the absence alerts page on.

use std::convert::Infallible;

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

/// Serves `registry` on `listener` until the process exits.
pub(crate) async fn serve(listener: TcpListener, registry: Registry) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: try again shortly
                // rather than spinning or giving the endpoint up.
                tracing::warn!(%error, "metrics endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service =
                service_fn(move |request| std::future::ready(Ok::<_, Infallible>(answer(&registry, &request))));
            // A scraper that hangs up mid-answer is not worth a log line.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn answer<B>(registry: &Registry, request: &Request<B>) -> Response<Full<Bytes>> {
    let response = |status: StatusCode, content_type: &str, body: Vec<u8>| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    if request.uri().path() != "/metrics" {
        return response(StatusCode::NOT_FOUND, "text/plain", b"only /metrics is served here\n".to_vec());
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return response(StatusCode::METHOD_NOT_ALLOWED, "text/plain", b"GET /metrics\n".to_vec());
    }
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => response(StatusCode::OK, encoder.format_type(), body),
        Err(error) => response(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{error}\n").into_bytes()),
    }
}
