//! What counts as "the database is unavailable" (UNAVAILABLE to clients, safe to retry), against
//! real sockets: a proxy in front of PostgreSQL (HAProxy during a failover, a pooler whose
//! server is gone) accepts the TCP connection and closes it at once when it has no server to
//! hand it to. sqlx then reads nothing where PostgreSQL's answer to its SSLRequest should be and
//! reports a protocol error, which must not become INTERNAL.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

#[tokio::test]
async fn a_proxy_that_accepts_and_closes_the_connection_is_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Accepts, takes what the client sends, and closes cleanly (FIN, not a reset), as
        // HAProxy does with no server up.
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0u8; 256];
            let _ = socket.read(&mut request).await;
            let _ = socket.shutdown().await;
        }
    });
    for sslmode in ["prefer", "disable"] {
        let url = format!("postgres://todo:secret@{addr}/todo?sslmode={sslmode}");
        let error = PgConnection::connect(&url).await.expect_err("nothing answers behind the proxy");
        assert!(
            todo_database::is_unavailable(&error),
            "sslmode={sslmode}: {error:?} should count as the database being unavailable"
        );
        println!("sslmode={sslmode}: {error}");
    }
    proxy.abort();
}
