// A Node client of the todo services with @grpc/grpc-js: sign up, create and list tasks, refresh
// the tokens, and handle errors by their google.rpc.ErrorInfo reason. The .proto files are loaded
// from ../../proto at run time (no generated code).
//
// Usage: node client.mjs   (AUTH_ADDR / TASK_ADDR default to 127.0.0.1:50051 / 127.0.0.1:50052)
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";
import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const definition = protoLoader.loadSync(["todo/auth/v1/auth.proto", "todo/task/v1/task.proto"], {
  includeDirs: [here("../../proto")],
  longs: String, // int64 task ids arrive as strings, without loss
  defaults: true,
});
const { todo } = grpc.loadPackageDefinition(definition);

// google.rpc.Status and ErrorInfo (vendored from googleapis) decode the grpc-status-details-bin trailer.
const rpc = protobuf.loadSync([here("proto/google/rpc/status.proto"), here("proto/google/rpc/error_details.proto")]);
const Status = rpc.lookupType("google.rpc.Status");
const ErrorInfo = rpc.lookupType("google.rpc.ErrorInfo");

/** The ErrorInfo reason the services attach to every error ("" if there is none). */
function errorReason(error) {
  const [details] = error.metadata?.get("grpc-status-details-bin") ?? [];
  if (!details) return "";
  const info = Status.decode(details).details.find((any) => any.type_url.endsWith("/google.rpc.ErrorInfo"));
  return info ? ErrorInfo.decode(info.value).reason : "";
}

function fail(message) {
  console.error(`node example failed: ${message}`);
  process.exit(1);
}

/** Awaits `call`, which must fail with `code` and `reason`; anything else ends the program. */
async function expectError(call, code, reason) {
  try {
    await call();
  } catch (error) {
    const got = `${grpc.status[error.code]} ${errorReason(error)}`;
    if (got !== `${grpc.status[code]} ${reason}`) fail(`expected ${grpc.status[code]} ${reason}, got ${got}: ${error.details}`);
    console.log(`  refused as expected: ${got} (${error.details})`);
    return;
  }
  fail(`expected ${grpc.status[code]} ${reason}, but the call succeeded`);
}

/** Promise versions of a client's unary methods, with a deadline and optional metadata. */
function client(Service, address) {
  const stub = new Service(address, grpc.credentials.createInsecure());
  return new Proxy(stub, {
    get: (target, name) => (request, metadata = new grpc.Metadata()) =>
      promisify(target[name].bind(target))(request, metadata, { deadline: Date.now() + 10_000 }),
  });
}

function bearer(accessToken) {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${accessToken}`);
  return metadata;
}

const auth = client(todo.auth.v1.AuthService, process.env.AUTH_ADDR ?? "127.0.0.1:50051");
const tasks = client(todo.task.v1.TaskService, process.env.TASK_ADDR ?? "127.0.0.1:50052");

const email = `node-${randomUUID().slice(0, 12)}@example.com`;
const password = "correct horse battery";
const signedUp = await auth.SignUp({ email, password });
console.log(`signed up ${signedUp.user.email} (user ${signedUp.user.id})`);
const { tokens } = signedUp;

console.log("signing up again with the same address:");
await expectError(() => auth.SignUp({ email, password }), grpc.status.ALREADY_EXISTS, "EMAIL_TAKEN");
console.log("logging in with a wrong password:");
await expectError(() => auth.Login({ email, password: "wrong password" }), grpc.status.UNAUTHENTICATED, "INVALID_CREDENTIALS");

const { task } = await tasks.CreateTask({ title: "Buy milk", description: "2 litres" }, bearer(tokens.accessToken));
console.log(`created task ${task.id}: ${JSON.stringify(task.title)} (etag ${task.etag})`);

const listed = await tasks.ListTasks({ pageSize: 20 }, bearer(tokens.accessToken));
console.log(`listed ${listed.tasks.length} task(s): ${JSON.stringify(listed.tasks.map((t) => t.title))}`);
if (listed.tasks.length !== 1 || listed.tasks[0].id !== task.id) fail(`expected exactly task ${task.id} in the list`);

const refreshed = (await auth.RefreshToken({ refreshToken: tokens.refreshToken })).tokens;
if (refreshed.refreshToken === tokens.refreshToken) fail("RefreshToken returned the same refresh token");
console.log(`refreshed the tokens: a new pair, access token valid for ${refreshed.expiresIn} s`);
const me = await auth.GetCurrentUser({}, bearer(refreshed.accessToken));
if (me.user.email !== email) fail(`GetCurrentUser with the new token answered ${me.user.email}`);
console.log(`the new access token works: GetCurrentUser says ${me.user.email}`);
const { sessions } = await auth.ListSessions({}, bearer(refreshed.accessToken));
const current = sessions.filter((s) => s.current);
if (current.length !== 1) fail(`ListSessions marked ${current.length} sessions as the caller's`);
console.log(`signed in ${sessions.length} time(s); this session was opened from ${current[0].createClientAddress}`);

console.log("calling TaskService without a token:");
await expectError(() => tasks.ListTasks({}), grpc.status.UNAUTHENTICATED, "MISSING_TOKEN");
console.log("node example (grpc-js): all steps succeeded");
process.exit(0); // grpc-js keeps idle channels open
