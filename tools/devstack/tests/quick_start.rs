//! The README's first Quick start command, run as a user would: the devstack binary starts a
//! private PostgreSQL, both services answer on the given ports, Ctrl-C stops everything, and a
//! second start finds the data again.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::auth::v1::{LoginRequest, SignUpRequest};
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::{CreateTaskRequest, ListTasksRequest};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Devstack(Child);

impl Devstack {
    fn start(data: &std::path::Path, auth: u16, task: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_devstack"))
            .env_remove("DATABASE_URL")
            .env("DEVSTACK_DATA_DIR", data)
            .env("AUTH_ADDR", format!("127.0.0.1:{auth}"))
            .env("TASK_ADDR", format!("127.0.0.1:{task}"))
            .env("BCRYPT_COST", "4")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("the devstack binary starts");
        Devstack(child)
    }

    /// SIGINT, as Ctrl-C sends; returns whether it exited with 0 within 30 s.
    fn interrupt(mut self) -> bool {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGINT);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Devstack {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn connect(port: u16) -> tonic::transport::Channel {
    let start = Instant::now();
    loop {
        let endpoint = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "nothing listens on {port} after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn postgres_running(data: &std::path::Path) -> bool {
    data.join("data/postmaster.pid").exists()
}

#[tokio::test]
async fn devstack_serves_both_services_and_keeps_the_data() {
    let data = std::env::temp_dir().join(format!("todo-devstack-{}", uuid::Uuid::new_v4().simple()));
    let (auth_port, task_port) = (free_port(), free_port());
    let password = "correct horse";

    let stack = Devstack::start(&data, auth_port, task_port);
    let mut auth = AuthServiceClient::new(connect(auth_port).await);
    let tokens = auth
        .sign_up(SignUpRequest { email: "quick@example.com".into(), password: password.into() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let mut tasks = TaskServiceClient::new(connect(task_port).await);
    let mut request = tonic::Request::new(CreateTaskRequest { title: "kept".into(), ..Default::default() });
    request.metadata_mut().insert("authorization", format!("Bearer {}", tokens.access_token).parse().unwrap());
    tasks.create_task(request).await.unwrap();
    assert!(postgres_running(&data));
    assert!(stack.interrupt(), "Ctrl-C ends devstack with exit code 0");
    assert!(!postgres_running(&data), "the PostgreSQL it started is stopped too");

    // A second start keeps the data.
    let stack = Devstack::start(&data, auth_port, task_port);
    let mut auth = AuthServiceClient::new(connect(auth_port).await);
    let tokens = auth
        .login(LoginRequest { email: "quick@example.com".into(), password: password.into() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let mut tasks = TaskServiceClient::new(connect(task_port).await);
    let mut request = tonic::Request::new(ListTasksRequest::default());
    request.metadata_mut().insert("authorization", format!("Bearer {}", tokens.access_token).parse().unwrap());
    let listed = tasks.list_tasks(request).await.unwrap().into_inner();
    assert_eq!(listed.tasks.iter().map(|t| t.title.as_str()).collect::<Vec<_>>(), ["kept"]);
    assert!(stack.interrupt());
    let _ = std::fs::remove_dir_all(&data);
}
