//! gRPC-Web and CORS over a real socket, spoken as browsers speak it: plain HTTP/1.1 requests
//! written by hand, so that nothing between the test and the server knows about gRPC.

use prost::Message;
use std::net::SocketAddr;
use testkit::test_database::TestDatabase;
use todo_proto::auth::v1::GetJwksResponse;
use todo_shared::server::grpc_web::CorsOrigins;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALLOWED: &str = "https://app.example.com";
const GET_JWKS: &str =
    "POST /todo.auth.v1.AuthService/GetJwks HTTP/1.1\r\ncontent-type: application/grpc-web+proto\r\nx-grpc-web: 1";
/// One uncompressed gRPC-Web frame holding an empty message (GetJwksRequest).
const EMPTY_MESSAGE: [u8; 5] = [0, 0, 0, 0, 0];

/// Sends one HTTP/1.1 request and returns the response head (lower-cased) and its de-chunked body.
async fn http1(addr: SocketAddr, head: &str, body: &[u8]) -> (String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("the server listens");
    let request = format!("{head}\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("the server answers and closes");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let response_head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut rest = &raw[split + 4..];
    if !response_head.contains("transfer-encoding: chunked") {
        return (response_head, rest.to_vec());
    }
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return (response_head, body);
        }
        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest = &rest[line_end + 2 + size + 2..];
    }
}

fn preflight(origin: &str) -> String {
    format!(
        "OPTIONS /todo.auth.v1.AuthService/GetJwks HTTP/1.1\r\norigin: {origin}\r\n\
         access-control-request-method: POST\r\naccess-control-request-headers: content-type,x-grpc-web,authorization"
    )
}

#[tokio::test]
async fn preflight_is_allowed_only_for_the_configured_origins_on_both_services() {
    let db = TestDatabase::new().await;
    let origins = CorsOrigins::parse(&format!("{ALLOWED}, http://localhost:5173")).unwrap();
    let mut auth_config = testkit::auth_config(&db);
    auth_config.cors_allowed_origins = origins.clone();
    let mut task_config = testkit::task_config(&db);
    task_config.cors_allowed_origins = origins;
    let (auth, task) = (testkit::spawn_auth(auth_config).await, testkit::spawn_task(task_config).await);

    for addr in [auth.addr, task.addr] {
        let (head, _) = http1(addr, &preflight(ALLOWED), b"").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains(&format!("access-control-allow-origin: {ALLOWED}")), "{head}");
        assert!(head.contains("access-control-allow-headers:") && head.contains("authorization"), "{head}");

        let (head, _) = http1(addr, &preflight("https://evil.example.com"), b"").await;
        assert!(!head.contains("access-control-allow-origin"), "a foreign origin must not be allowed: {head}");
    }

    // The call itself: the browser may read the error headers only if they are exposed.
    let (head, _) = http1(auth.addr, &format!("{GET_JWKS}\r\norigin: {ALLOWED}"), &EMPTY_MESSAGE).await;
    assert!(head.contains(&format!("access-control-allow-origin: {ALLOWED}")), "{head}");
    assert!(head.contains("access-control-expose-headers:") && head.contains("grpc-status-details-bin"), "{head}");
}

#[tokio::test]
async fn without_cors_origins_no_origin_is_allowed() {
    let db = TestDatabase::new().await;
    let auth = testkit::spawn_auth(testkit::auth_config(&db)).await;
    let (head, _) = http1(auth.addr, &preflight(ALLOWED), b"").await;
    assert!(!head.contains("access-control-"), "no CORS header at all: {head}");
    let (head, _) = http1(auth.addr, &format!("{GET_JWKS}\r\norigin: {ALLOWED}"), &EMPTY_MESSAGE).await;
    assert!(head.starts_with("http/1.1 200") && !head.contains("access-control-"), "{head}");
}

#[tokio::test]
async fn a_grpc_web_call_over_http1_is_answered() {
    let db = TestDatabase::new().await;
    let auth = testkit::spawn_auth(testkit::auth_config(&db)).await;
    let (head, body) = http1(auth.addr, GET_JWKS, &EMPTY_MESSAGE).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: application/grpc-web+proto"), "{head}");

    // A data frame (flag 0) with the message, then a trailers frame (flag 0x80) with grpc-status.
    assert_eq!(body[0], 0, "a data frame first: {body:?}");
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let jwks = GetJwksResponse::decode(&body[5..5 + len]).expect("a GetJwksResponse");
    assert!(jwks.keys.iter().any(|k| k.kty == "OKP" && k.alg == "EdDSA"), "{jwks:?}");
    let trailers = &body[5 + len..];
    assert_eq!(trailers[0], 0x80, "a trailers frame next");
    let trailers = String::from_utf8_lossy(&trailers[5..]).to_ascii_lowercase();
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
}
