//! The gRPC contract (todo.auth.v1, todo.task.v1) as generated Rust: messages, clients, servers.

/// Encoded `FileDescriptorSet` of both packages and their imports, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/todo_descriptor.bin"));

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("todo.auth.v1");
    }
}

pub mod task {
    pub mod v1 {
        tonic::include_proto!("todo.task.v1");
    }
}
