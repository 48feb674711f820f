//! Reading a server's `/metrics` the way Prometheus does: a plain HTTP GET, then the series by
//! name and labels.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback address with a port that was free a moment ago, for METRICS_ADDR in tests.
pub fn free_local_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    listener.local_addr().expect("a bound listener has an address")
}

/// Waits (up to 10 s) until the endpoint accepts connections: a server binds it while starting.
pub async fn wait_until_up(addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no metrics endpoint at {addr}");
}

/// `GET /metrics` over HTTP/1.1: the status code, the content type and the body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("the metrics endpoint accepts connections");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("sending the request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.expect("reading the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response has a head and a body");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_string))
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// The exposition at `addr`, asserting that it is served as Prometheus text.
pub async fn scrape(addr: SocketAddr) -> Metrics {
    let (status, content_type, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    Metrics(body)
}

/// One scrape's text.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the sample `name` whose labels include all of `labels`; None if there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let has_all = labels.iter().all(|(k, v)| label_text.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            (series_name == name && has_all).then(|| value.parse().ok())?
        })
    }

    /// Like `value`, with 0 for a series not (yet) there: counters appear on their first use.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }
}
