#!/usr/bin/env python3
"""Asserts what deploy/k8s promises on rendered manifests (tools/ci/k8s.sh renders them).

    k8s_check.py [--secrets-example FILE] NAME=RENDERED.yaml ...

NAME is the overlay's name (its folder under deploy/k8s/overlays); the overlay named `pgbouncer`
must route the services through the pooler. One line per assertion (`ok` or `FAIL`), then a count;
exit 1 if any failed. Needs PyYAML (k8s.sh runs it with its venv's python).
"""

import argparse
import re
import sys
from urllib.parse import urlsplit

import yaml

SERVICES = ("auth-service", "task-service")
LISTEN_ENV = {"auth-service": "AUTH_ADDR", "task-service": "TASK_ADDR"}
DEFAULT_GRACE = 30  # Kubernetes' default terminationGracePeriodSeconds
DEFAULT_DRAIN = 10  # SHUTDOWN_DRAIN_SECONDS when unset (README, Configuration)
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")

passed = 0
failed = 0


def check(where, condition, what):
    global passed, failed
    if condition:
        passed += 1
        print(f"ok   {where}: {what}")
    else:
        failed += 1
        print(f"FAIL {where}: {what}")
    return condition


def env_of(container):
    """name -> the env entry (value or valueFrom)."""
    return {e["name"]: e for e in container.get("env") or []}


def env_value(container, name):
    entry = env_of(container).get(name)
    return None if entry is None else entry.get("value")


def secret_key(container, name):
    entry = env_of(container).get(name) or {}
    ref = (entry.get("valueFrom") or {}).get("secretKeyRef") or {}
    return (ref.get("name"), ref.get("key")) if ref else None


def effective(pod_sc, container_sc, field):
    """A container's setting, falling back to the pod's securityContext as Kubernetes does."""
    if container_sc and field in container_sc:
        return container_sc[field]
    return (pod_sc or {}).get(field)


def grpc_port(container):
    for port in container.get("ports") or []:
        if port.get("name") == "grpc":
            return port["containerPort"]
    return None


def command_text(container):
    return " ".join(str(part) for part in (container.get("command") or []) + (container.get("args") or []))


def check_security(where, pod, container):
    pod_sc = pod.get("securityContext") or {}
    sc = container.get("securityContext") or {}
    check(where, effective(pod_sc, sc, "runAsNonRoot") is True, "runAsNonRoot: true")
    uid = effective(pod_sc, sc, "runAsUser")
    check(where, isinstance(uid, int) and uid != 0, f"runAsUser is a numeric non-root uid ({uid})")
    check(where, sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem: true")
    check(where, sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false")
    check(where, "ALL" in ((sc.get("capabilities") or {}).get("drop") or []), "capabilities drop ALL")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    check(where, seccomp == "RuntimeDefault", f"seccompProfile RuntimeDefault ({seccomp})")


def check_probes(where, container):
    port = grpc_port(container)
    if port is None:
        # Not a gRPC server (the pooler): it must still be probed.
        for probe in ("readinessProbe", "livenessProbe"):
            check(where, bool(container.get(probe)), f"has a {probe}")
        return
    for probe in ("readinessProbe", "livenessProbe"):
        grpc = (container.get(probe) or {}).get("grpc") or {}
        check(where, grpc.get("port") == port,
              f"{probe} is grpc on the declared grpc port {port} (got {grpc.get('port')})")
        check(where, grpc.get("service", "") == "", f"{probe} asks the overall health service \"\"")
    liveness = container.get("livenessProbe") or {}
    tolerated = liveness.get("periodSeconds", 10) * liveness.get("failureThreshold", 3)
    check(where, tolerated >= 120,
          f"livenessProbe tolerates a database outage ({tolerated} s of NOT_SERVING before a restart, >= 120)")
    service = (container.get("args") or [None])[0]
    listen = env_value(container, LISTEN_ENV.get(service, ""))
    check(where, listen is not None and listen.rsplit(":", 1)[-1] == str(port),
          f"{LISTEN_ENV.get(service, 'listen address')}={listen} listens on the grpc port {port}")


def check_grace(where, pod, container):
    drain_text = env_value(container, "SHUTDOWN_DRAIN_SECONDS")
    drain = int(drain_text) if drain_text is not None else DEFAULT_DRAIN
    sleep = ((((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep")) or {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", DEFAULT_GRACE)
    check(where, sleep > 0, f"preStop sleeps ({sleep} s) so that endpoints drop the pod before SIGTERM")
    check(where, grace > sleep + drain,
          f"terminationGracePeriodSeconds {grace} > preStop sleep {sleep} + SHUTDOWN_DRAIN_SECONDS {drain}"
          f"{'' if drain_text is not None else ' (default)'}")


def check_signing_key(where, pod, container):
    """SIGNING_KEY_FILE is a 0600 copy, owned by the service's uid, in an in-memory emptyDir."""
    path = env_value(container, "SIGNING_KEY_FILE")
    if not check(where, bool(path), f"SIGNING_KEY_FILE is set ({path})"):
        return
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mount = next((m for m in container.get("volumeMounts") or []
                  if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
    if not check(where, mount is not None, f"SIGNING_KEY_FILE {path} is on a mounted volume"):
        return
    volume = volumes.get(mount["name"], {})
    check(where, (volume.get("emptyDir") or {}).get("medium") == "Memory",
          f"SIGNING_KEY_FILE's volume {mount['name']} is an emptyDir with medium Memory")
    check(where, not any("secret" in volumes.get(m["name"], {}) for m in container.get("volumeMounts") or []),
          "the service mounts no secret volume itself (a secret file would be 0440 or root's)")
    relative = path[len(mount["mountPath"].rstrip("/")) + 1:]
    copiers = []
    for init in pod.get("initContainers") or []:
        for m in init.get("volumeMounts") or []:
            if m["name"] == mount["name"]:
                copiers.append((init, m["mountPath"].rstrip("/") + "/" + relative))
    if not check(where, len(copiers) == 1, "one init container writes the signing-key volume"):
        return
    init, copy_path = copiers[0]
    text = command_text(init)
    check(where, re.search(r"chmod (0?600|u=rw,go=) " + re.escape(copy_path) + r"(\s|$|;|&)", text) is not None,
          f"init container {init['name']} runs chmod 600 {copy_path}")
    pod_sc = pod.get("securityContext") or {}
    init_sc = init.get("securityContext") or {}
    sc = container.get("securityContext") or {}
    init_uid = effective(pod_sc, init_sc, "runAsUser")
    uid = effective(pod_sc, sc, "runAsUser")
    check(where, init_uid == uid, f"the copy belongs to the service's uid (init {init_uid}, service {uid})")
    # Where the copy comes from: the secret volume, readable by the init container through fsGroup.
    sources = [volumes[m["name"]] for m in init.get("volumeMounts") or [] if "secret" in volumes.get(m["name"], {})]
    if check(where, len(sources) == 1, f"init container {init['name']} mounts the signing-key Secret"):
        secret = sources[0]["secret"]
        mode = secret.get("defaultMode", 0o644)
        check(where, secret.get("secretName") == "todo-signing-key", f"Secret is todo-signing-key ({secret.get('secretName')})")
        group = effective(pod_sc, init_sc, "runAsGroup")
        check(where, pod_sc.get("fsGroup") == group and mode & 0o040 != 0,
              f"the Secret's file (mode {mode:04o}, group fsGroup {pod_sc.get('fsGroup')}) is readable by the "
              f"init container's group {group}")


def check_database(where, name, container, pooled):
    check(where, secret_key(container, "DATABASE_DIRECT_URL") == ("todo-database", "direct-url"),
          f"DATABASE_DIRECT_URL from Secret todo-database key direct-url ({secret_key(container, 'DATABASE_DIRECT_URL')})")
    want_key = "pooled-url" if pooled else "url"
    check(where, secret_key(container, "DATABASE_URL") == ("todo-database", want_key),
          f"DATABASE_URL from Secret todo-database key {want_key} ({secret_key(container, 'DATABASE_URL')})")
    mode = env_value(container, "DB_POOL_MODE")
    if pooled:
        check(where, mode == "transaction", f"DB_POOL_MODE=transaction ({mode})")
    else:
        check(where, mode in (None, "session"), f"DB_POOL_MODE unset or session ({mode})")
    migrations = env_value(container, "RUN_MIGRATIONS")
    want = "true" if name == "auth-service" else "false"
    check(where, migrations == want, f"RUN_MIGRATIONS={want}: only auth-service migrates ({migrations})")


def check_overlay(overlay, docs, whole=True):
    """whole: a full rendering (both services); otherwise only each workload's own settings."""
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    deployments = by_kind.get("Deployment", {})
    pooled = "todo-pgbouncer" in deployments
    if overlay == "pgbouncer":
        check(overlay, pooled, "has the pooler Deployment todo-pgbouncer")
    for name in SERVICES if whole else ():
        check(overlay, name in deployments, f"has Deployment {name}")
    for kind in WORKLOADS:
        for name, doc in by_kind.get(kind, {}).items():
            pod = doc["spec"]["template"]["spec"]
            for init in pod.get("initContainers") or []:
                check_security(f"{overlay}: {kind}/{name} init container {init['name']}", pod, init)
            for container in pod.get("containers") or []:
                where = f"{overlay}: {kind}/{name} container {container['name']}"
                check_security(where, pod, container)
                if kind == "Job":
                    continue
                check_probes(where, container)
                if name in SERVICES:
                    check_grace(where, pod, container)
                    check_database(where, name, container, pooled)
                    if name == "auth-service":
                        check_signing_key(where, pod, container)
    for name in SERVICES:
        if name not in deployments:
            continue
        deployment = deployments[name]
        where = f"{overlay}: {name}"
        check(where, deployment["spec"].get("replicas") == 2, f"replicas 2 ({deployment['spec'].get('replicas')})")
        rolling = (deployment["spec"].get("strategy") or {}).get("rollingUpdate") or {}
        check(where, rolling.get("maxUnavailable") == 0, "rolling update with maxUnavailable 0")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        port = grpc_port(container)
        service = by_kind.get("Service", {}).get(name)
        if check(where, service is not None, f"has Service {name}"):
            grpc = next((p for p in service["spec"]["ports"] if p.get("name") == "grpc"), {})
            check(where, grpc.get("targetPort") in ("grpc", port) and grpc.get("appProtocol") == "kubernetes.io/h2c",
                  f"Service port grpc targets the grpc container port with appProtocol kubernetes.io/h2c ({grpc})")
            check(where, any(p.get("name") == "metrics" for p in service["spec"]["ports"]), "Service has a metrics port")
        hpa = by_kind.get("HorizontalPodAutoscaler", {}).get(name)
        if check(where, hpa is not None and hpa["apiVersion"] == "autoscaling/v2", "has an autoscaling/v2 HPA"):
            cpu = [m for m in hpa["spec"].get("metrics") or [] if (m.get("resource") or {}).get("name") == "cpu"]
            target = cpu[0]["resource"]["target"].get("averageUtilization") if cpu else None
            check(where, (hpa["spec"].get("minReplicas"), hpa["spec"].get("maxReplicas"), target) == (2, 10, 70),
                  f"HPA on CPU 70 %, 2 to 10 pods ({hpa['spec'].get('minReplicas')}..{hpa['spec'].get('maxReplicas')}, {target})")
        pdb = by_kind.get("PodDisruptionBudget", {}).get(name)
        check(where, pdb is not None and pdb["spec"].get("minAvailable") == 1, "has a PodDisruptionBudget minAvailable 1")
        resources = container.get("resources") or {}
        check(where, all((resources.get(side) or {}).get(r) for side in ("requests", "limits") for r in ("cpu", "memory")),
              "CPU and memory requests and limits set")
    if pooled:
        pooler = deployments["todo-pgbouncer"]["spec"]["template"]["spec"]["containers"][0]
        check(overlay, env_value(pooler, "POOL_MODE") == "transaction",
              f"the pooler runs pool_mode transaction ({env_value(pooler, 'POOL_MODE')})")
        check(overlay, "todo-pgbouncer" in by_kind.get("Service", {}), "has the pooler Service todo-pgbouncer")


def check_secrets_example(path):
    where = path
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    secrets = {d["metadata"]["name"]: d.get("stringData") or {} for d in docs if d.get("kind") == "Secret"}
    database = secrets.get("todo-database", {})
    check(where, {"url", "direct-url", "pooled-url", "pgbouncer-upstream"} <= set(database),
          f"todo-database has url, direct-url, pooled-url, pgbouncer-upstream ({sorted(database)})")
    pooled_host = urlsplit(database.get("pooled-url", "")).hostname
    direct_host = urlsplit(database.get("direct-url", "")).hostname
    check(where, pooled_host == "todo-pgbouncer", f"pooled-url points at the pooler Service ({pooled_host})")
    check(where, direct_host not in (None, "todo-pgbouncer"), f"direct-url points at PostgreSQL itself ({direct_host})")
    check(where, "signing-key.pem" in secrets.get("todo-signing-key", {}), "todo-signing-key has key signing-key.pem")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--secrets-example")
    parser.add_argument("--workloads", action="append", default=[], metavar="FILE",
                        help="other manifests (the example Job): only their pods' security settings")
    parser.add_argument("rendered", nargs="+", metavar="NAME=FILE")
    args = parser.parse_args()
    names = []
    for item in args.rendered:
        overlay, _, path = item.partition("=")
        names.append(overlay)
        with open(path) as f:
            check_overlay(overlay, [d for d in yaml.safe_load_all(f) if d])
    for path in args.workloads:
        with open(path) as f:
            check_overlay(path, [d for d in yaml.safe_load_all(f) if d], whole=False)
    check("overlays", "pgbouncer" in names, f"the pgbouncer overlay was checked ({', '.join(names)})")
    if args.secrets_example:
        check_secrets_example(args.secrets_example)
    print(f"k8s_check: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
