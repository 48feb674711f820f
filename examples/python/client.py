"""A Python client of the todo services: sign up, create and list tasks, refresh the tokens, and
handle errors by their google.rpc.ErrorInfo reason. Stubs are generated from ../../proto at start.

Usage: python client.py   (AUTH_ADDR / TASK_ADDR default to 127.0.0.1:50051 / 127.0.0.1:50052)
"""

import os
import sys
import uuid
from importlib import resources
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE.parent.parent / "proto"
GEN_DIR = HERE / "gen"


def generate_stubs():
    """Runs protoc (bundled with grpcio-tools) on the contract, so the stubs never go stale."""
    GEN_DIR.mkdir(exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/timestamp.proto
    for proto in ["todo/auth/v1/auth.proto", "todo/task/v1/task.proto"]:
        args = ["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={GEN_DIR}",
                f"--grpc_python_out={GEN_DIR}", proto]
        if protoc.main(args) != 0:
            sys.exit(f"protoc failed on {proto}")
    sys.path.insert(0, str(GEN_DIR))


generate_stubs()
from todo.auth.v1 import auth_pb2, auth_pb2_grpc  # noqa: E402  (generated just above)
from todo.task.v1 import task_pb2, task_pb2_grpc  # noqa: E402


def error_reason(error: grpc.RpcError) -> str:
    """The ErrorInfo reason that the services attach to every error (in grpc-status-details-bin)."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def expect_error(call, code: grpc.StatusCode, reason: str):
    """Runs `call`, which must fail with `code` and `reason`; anything else ends the program."""
    try:
        call()
    except grpc.RpcError as error:
        got = (error.code(), error_reason(error))
        if got != (code, reason):
            sys.exit(f"expected {code.name} {reason}, got {got[0].name} {got[1]}: {error.details()}")
        print(f"  refused as expected: {code.name} {reason} ({error.details()})")
        return
    sys.exit(f"expected {code.name} {reason}, but the call succeeded")


def bearer(access_token: str):
    return [("authorization", f"Bearer {access_token}")]


def main():
    auth_channel = grpc.insecure_channel(os.environ.get("AUTH_ADDR", "127.0.0.1:50051"))
    task_channel = grpc.insecure_channel(os.environ.get("TASK_ADDR", "127.0.0.1:50052"))
    auth = auth_pb2_grpc.AuthServiceStub(auth_channel)
    tasks = task_pb2_grpc.TaskServiceStub(task_channel)

    email, password = f"python-{uuid.uuid4().hex[:12]}@example.com", "correct horse battery"
    signed_up = auth.SignUp(auth_pb2.SignUpRequest(email=email, password=password), timeout=10)
    print(f"signed up {signed_up.user.email} (user {signed_up.user.id})")
    tokens = signed_up.tokens

    print("signing up again with the same address:")
    expect_error(lambda: auth.SignUp(auth_pb2.SignUpRequest(email=email, password=password), timeout=10),
                 grpc.StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN")
    print("logging in with a wrong password:")
    expect_error(lambda: auth.Login(auth_pb2.LoginRequest(email=email, password="wrong password"), timeout=10),
                 grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")

    created = tasks.CreateTask(task_pb2.CreateTaskRequest(title="Buy milk", description="2 litres"),
                               metadata=bearer(tokens.access_token), timeout=10).task
    print(f"created task {created.id}: {created.title!r} (etag {created.etag})")

    listed = tasks.ListTasks(task_pb2.ListTasksRequest(page_size=20), metadata=bearer(tokens.access_token),
                             timeout=10)
    print(f"listed {len(listed.tasks)} task(s): {[t.title for t in listed.tasks]}")
    if [t.id for t in listed.tasks] != [created.id]:
        sys.exit(f"expected exactly task {created.id} in the list")

    refreshed = auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=tokens.refresh_token), timeout=10).tokens
    if refreshed.refresh_token == tokens.refresh_token:
        sys.exit("RefreshToken returned the same refresh token")
    print(f"refreshed the tokens: a new pair, access token valid for {refreshed.expires_in} s")
    me = auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=bearer(refreshed.access_token), timeout=10)
    if me.user.email != email:
        sys.exit(f"GetCurrentUser with the new token answered {me.user.email}")
    print(f"the new access token works: GetCurrentUser says {me.user.email}")
    sessions = auth.ListSessions(auth_pb2.ListSessionsRequest(), metadata=bearer(refreshed.access_token),
                                 timeout=10).sessions
    current = [s for s in sessions if s.current]
    if len(current) != 1:
        sys.exit(f"ListSessions marked {len(current)} sessions as the caller's")
    print(f"signed in {len(sessions)} time(s); this session was opened from {current[0].create_client_address}")

    print("calling TaskService without a token:")
    expect_error(lambda: tasks.ListTasks(task_pb2.ListTasksRequest(), timeout=10),
                 grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN")
    print("python example: all steps succeeded")


if __name__ == "__main__":
    main()
