# Multi-stage build of both services. No protoc is needed (protox compiles the .proto files).
#   docker build -t todo-backend .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p auth-service -p task-service

# Distroless: no shell, no package manager; the binaries check their own health
# (`auth-service healthcheck`), so the image needs nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /src/target/release/auth-service /usr/local/bin/auth-service
COPY --from=build /src/target/release/task-service /usr/local/bin/task-service
USER nonroot
