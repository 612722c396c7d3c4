//! A real OTLP/gRPC receiver for tests, built on the official
//! opentelemetry-proto definitions: services export to it as to a
//! collector, and the test reads back every span and metric.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    metrics::v1::Metric,
    resource::v1::Resource,
    trace::v1::Span,
};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Received {
    traces: Mutex<Vec<ExportTraceServiceRequest>>,
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
}

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<Received>,
    task: tokio::task::JoinHandle<()>,
}

/// A span with the `service.name` of the resource that sent it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub resource: Resource,
    pub span: Span,
}

/// A metric with the `service.name` of the resource that sent it.
#[derive(Debug, Clone)]
pub struct ReceivedMetric {
    pub service: String,
    pub metric: Metric,
}

impl OtlpReceiver {
    /// Listens on a free port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Received::default());
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Sink(Arc::clone(&received))))
            .add_service(MetricsServiceServer::new(Sink(Arc::clone(&received))))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        let task = tokio::spawn(async move {
            server.await.unwrap();
        });
        Self { addr, received, task }
    }

    /// The endpoint for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let mut spans = Vec::new();
        for request in self.received.traces.lock().unwrap().iter() {
            for resource_spans in &request.resource_spans {
                let resource = resource_spans.resource.clone().unwrap_or_default();
                let service = string_attribute(&resource.attributes, "service.name").unwrap_or_default();
                for scope in &resource_spans.scope_spans {
                    for span in &scope.spans {
                        spans.push(ReceivedSpan {
                            service: service.clone(),
                            resource: resource.clone(),
                            span: span.clone(),
                        });
                    }
                }
            }
        }
        spans
    }

    /// Every metric received so far (each export of a metric is one entry).
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        let mut metrics = Vec::new();
        for request in self.received.metrics.lock().unwrap().iter() {
            for resource_metrics in &request.resource_metrics {
                let resource = resource_metrics.resource.clone().unwrap_or_default();
                let service = string_attribute(&resource.attributes, "service.name").unwrap_or_default();
                for scope in &resource_metrics.scope_metrics {
                    for metric in &scope.metrics {
                        metrics.push(ReceivedMetric { service: service.clone(), metric: metric.clone() });
                    }
                }
            }
        }
        metrics
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The string value of attribute `key`, if present.
pub fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attribute(attributes, key).and_then(|value| match value {
        Value::StringValue(s) => Some(s),
        _ => None,
    })
}

/// The value of attribute `key`, if present.
pub fn attribute(attributes: &[KeyValue], key: &str) -> Option<Value> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()).and_then(|AnyValue { value }| value)
}

struct Sink(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.0.traces.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.0.metrics.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}
