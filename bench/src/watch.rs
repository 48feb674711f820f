//! watch: how long a committed change takes to reach a WatchTasks stream. One stream per user
//! for `streams` users; a writer creates tasks for them at a steady pace, and each stream notes
//! when the event for a task arrives. The latency is measured from the CreateTask response
//! (the change has committed by then) to the event; the create's own round trip is reported
//! beside it, so "from the request" is the sum at worst.

use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::{CreateTaskRequest, WatchTasksRequest};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

fn request<T>(bearer: &MetadataValue<Ascii>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", bearer.clone());
    request
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    (sorted[at] * 100.0).round() / 100.0
}

pub async fn latency(
    client: TaskServiceClient<Channel>,
    bearers: &[MetadataValue<Ascii>],
    per_second: u32,
    measure: Duration,
) -> anyhow::Result<Value> {
    // task id -> (request sent, response received), and the arrival of its event.
    let sent: Arc<Mutex<HashMap<i64, (Instant, Instant)>>> = Arc::default();
    let arrived: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let mut streams = Vec::new();
    for bearer in bearers {
        let mut stream = client.clone().watch_tasks(request(bearer, WatchTasksRequest::default())).await?.into_inner();
        let arrived = arrived.clone();
        streams.push(tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                if let Some(task) = event.task {
                    arrived.lock().expect("no panics while held").entry(task.id).or_insert_with(Instant::now);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut every = tokio::time::interval(Duration::from_secs(1) / per_second);
    let end = Instant::now() + measure;
    let mut n = 0usize;
    let mut errors = 0u64;
    while Instant::now() < end {
        every.tick().await;
        let bearer = &bearers[n % bearers.len()];
        n += 1;
        let started = Instant::now();
        let create = CreateTaskRequest { title: "watched".into(), ..Default::default() };
        match client.clone().create_task(request(bearer, create)).await {
            Ok(response) => {
                let id = response.into_inner().task.map(|t| t.id).unwrap_or_default();
                sent.lock().expect("no panics while held").insert(id, (started, Instant::now()));
            }
            Err(_) => errors += 1,
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for stream in streams {
        stream.abort();
    }
    let (sent, arrived) = (sent.lock().expect("no panics").clone(), arrived.lock().expect("no panics").clone());
    let mut after_response = Vec::new();
    let mut round_trip = Vec::new();
    let mut missing = 0;
    for (id, (started, answered)) in &sent {
        round_trip.push(answered.duration_since(*started).as_secs_f64() * 1000.0);
        match arrived.get(id) {
            Some(at) => after_response.push(at.saturating_duration_since(*answered).as_secs_f64() * 1000.0),
            None => missing += 1,
        }
    }
    after_response.sort_by(f64::total_cmp);
    round_trip.sort_by(f64::total_cmp);
    Ok(json!({
        "scenario": "watch",
        "streams": bearers.len(),
        "changes_per_second": per_second,
        "changes": sent.len(),
        "errors": errors,
        "missing_events": missing,
        "event_after_response_p50_ms": percentile(&after_response, 0.5),
        "event_after_response_p99_ms": percentile(&after_response, 0.99),
        "event_after_response_max_ms": percentile(&after_response, 1.0),
        "create_round_trip_p50_ms": percentile(&round_trip, 0.5),
        "create_round_trip_p99_ms": percentile(&round_trip, 0.99),
    }))
}
