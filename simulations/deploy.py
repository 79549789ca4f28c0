"""A real deployment on this machine: one SuperLink and N SuperNodes talking over HTTP(S), as on separate machines.

``fedgen deploy up`` starts them (TLS and SuperNode authentication by default), records every PID in
``DIR/deployment.json`` and writes a Flower config (``DIR/flwr-home/config.toml``) naming the SuperLink connection
'fedgen-local', so that ``FLWR_HOME=DIR/flwr-home flwr run . fedgen-local`` runs any experiment against them.
``fedgen deploy down`` stops exactly the processes it started (their process groups and their children), by PID.
``fedgen deploy certs DIR`` makes a throwaway CA and a server certificate for 127.0.0.1 / localhost (testing only).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from fedgen.results import write_atomic
from simulations import procs

CONNECTION = "fedgen-local"
STATE_FILE = "deployment.json"
HOST = "127.0.0.1"


# --- keys and certificates -------------------------------------------------------------------------------------
def make_certs(folder: str | Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> dict[str, Path]:
    """A throwaway CA and a server certificate signed by it (for tests and local trials, not production)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("fedgen test CA")).issuer_name(name("fedgen test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    sans = [x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts]
    cert = (
        x509.CertificateBuilder().subject_name(name(hosts[0])).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths["key"].chmod(0o600)
    return paths


def make_node_key(folder: str | Path, name: str) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair in OpenSSH format, as `ssh-keygen -t ecdsa -b 384` makes (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return private, public


# --- processes -------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _env(folder: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # flower-superlink starts flower-superexec from PATH
    return {**os.environ, "FLWR_HOME": str(folder / "flwr-home"), "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}


def _start(folder: Path, name: str, cmd: list[str]) -> int:
    return procs.start(cmd, folder / f"{name}.log", _env(folder))


def _wait_for_port(port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not open {HOST}:{port} within {timeout:.0f} s")


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def flwr(folder: str | Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The `flwr` CLI with this deployment's FLWR_HOME."""
    folder = Path(folder).resolve()
    return subprocess.run([_bin("flwr"), *args], env=_env(folder), capture_output=True, text=True, timeout=timeout)


def load_state(folder: str | Path) -> dict:
    path = Path(folder) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no deployment recorded in {folder} ({STATE_FILE} missing)")
    return json.loads(path.read_text())


def _save_state(folder: Path, state: dict) -> None:
    write_atomic(folder / STATE_FILE, json.dumps(state, indent=2))


def superlink_command(host: str, port: int, tls: dict[str, Path] | None, database: str | Path) -> list[str]:
    """The SuperLink: Fleet and control APIs over HTTP(S) on ``host:port`` (Flower >= 1.40); with ``tls`` (paths of
    'ca', 'cert', 'key'), HTTPS and SuperNode authentication, else insecure."""
    cmd = ["flower-superlink", "--host", host, "--port", str(port)]
    if tls:
        cmd += ["--ssl-ca-certfile", str(tls["ca"]), "--ssl-certfile", str(tls["cert"]), "--ssl-keyfile",
                str(tls["key"]), "--enable-supernode-auth"]
    else:
        cmd += ["--insecure"]
    return [*cmd, "--disable-runtime-dependency-installation", "--database", str(database)]


def supernode_command(superlink: str, node_config: str, ca: str | Path | None, key: str | Path | None,
                      runtime: str | None = None) -> list[str]:
    """A SuperNode dialling the SuperLink at ``superlink`` (host:port): over HTTPS checked against ``ca`` and
    authenticated by its private ``key``, or insecure without ``ca``; ``runtime``: the host:port of its own runtime
    API, which must differ between nodes on one machine (Flower's default 127.0.0.1:9094)."""
    cmd = ["flower-supernode", "--superlink", superlink]
    if runtime:
        host, port = runtime.rsplit(":", 1)
        cmd += ["--host", host, "--port", port]
    cmd += ["--node-config", node_config]
    if ca is None:
        return [*cmd, "--insecure"]
    return [*cmd, "--root-certificates", str(ca), *(["--auth-supernode-private-key", str(key)] if key else [])]


def start_supernode(folder: str | Path, partition: int, num_partitions: int, key: Path | None = None) -> int:
    """Start one SuperNode for ``partition`` against the recorded SuperLink; its PID joins the record. The node
    keeps its state (its privacy ledger included) in the deployment's ``state_root/node-<k>``; with
    ``dp_epsilon_max``, it caps its own privacy spending."""
    folder = Path(folder).resolve()
    state = load_state(folder)
    node_config = (f"partition-id={partition} num-partitions={num_partitions} "
                   f"state-dir={json.dumps(str(Path(state['state_root']) / f'node-{partition}'))}")
    if state.get("dp_epsilon_max") is not None:
        node_config += f" dp-epsilon-max={float(state['dp_epsilon_max'])}"
    cmd = supernode_command(f"{HOST}:{state['port']}", node_config, state["ca"] if state["secure"] else None, key,
                            runtime=f"{HOST}:{free_port()}")
    pid = _start(folder, f"supernode-{partition}-{len(state['pids'])}", [_bin(cmd[0]), *cmd[1:]])
    state["pids"].append(pid)
    _save_state(folder, state)
    return pid


def up(folder: str | Path, nodes: int, secure: bool = True, certs: str | Path | None = None,
       state_root: str | Path | None = None, dp_epsilon_max: float | None = None) -> dict:
    """Start a SuperLink and ``nodes`` SuperNodes (partition i on node i); returns the recorded state. ``state_root``
    (default ``folder/state``) and ``dp_epsilon_max``: each node's own state folder (under it) and privacy cap
    (:func:`start_supernode`)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / STATE_FILE).exists() and load_state(folder)["pids"]:
        raise RuntimeError(f"a deployment is already recorded in {folder}: run `fedgen deploy down` first")
    port = free_port()
    home = folder / "flwr-home"
    home.mkdir(exist_ok=True)
    state = {"port": port, "secure": secure, "pids": [], "nodes": nodes, "dp_epsilon_max": dp_epsilon_max,
             "state_root": str(Path(state_root or folder / "state").resolve())}
    connection = [
        f'[superlink]\ndefault = "{CONNECTION}"\n', f"[superlink.{CONNECTION}]", f'address = "{HOST}:{port}"'
    ]
    if secure:
        paths = make_certs(folder / "certs") if certs is None else {
            "ca": Path(certs) / "ca.crt", "cert": Path(certs) / "server.pem", "key": Path(certs) / "server.key"}
        for p in paths.values():
            if not p.is_file():
                raise FileNotFoundError(f"TLS file missing: {p}")
        state["ca"] = str(paths["ca"].resolve())
        connection.append(f'root-certificates = "{state["ca"]}"')
    else:
        paths = None
        connection.append("insecure = true")
    (home / "config.toml").write_text("\n".join(connection) + "\n")
    cmd = superlink_command(HOST, port, paths, folder / "superlink.db")
    state["pids"].append(_start(folder, "superlink", [_bin(cmd[0]), *cmd[1:]]))
    _save_state(folder, state)
    try:
        _wait_for_port(port, 60, "the SuperLink")
        for i in range(nodes):
            key = None
            if secure:
                key, pub = make_node_key(folder / "keys", f"node-{i}")
                register(folder, pub)
            start_supernode(folder, i, nodes, key)
    except BaseException:
        down(folder)
        raise
    return load_state(folder)


def register(folder: str | Path, public_key: str | Path) -> None:
    result = flwr(folder, "supernode", "register", str(public_key), CONNECTION)
    if result.returncode != 0:
        raise RuntimeError(f"registering {public_key} failed: {result.stdout[-500:]} {result.stderr[-500:]}")


def down(folder: str | Path, grace: float = 10.0) -> tuple[list[int], list[int]]:
    """Stop the processes this deployment started (and theirs), by PID; returns (the PIDs signalled, those still
    alive). What could not be stopped stays recorded, so a later `down` tries again."""
    folder = Path(folder).resolve()
    state = load_state(folder)
    stopped, left = procs.stop(state["pids"], grace)
    state["pids"] = left
    _save_state(folder, state)
    return stopped, left


class SuperLinkGone(RuntimeError):
    """The deployment's SuperLink stopped answering while a run was on it."""


def run_config_file(folder: str | Path, values: dict[str, str | bool]) -> Path:
    """A TOML run config for `flwr run --run-config FILE`: every value a TOML basic string (JSON's escapes), so any
    text survives, quotes and braces included."""
    lines = [f"{key} = {json.dumps(v) if isinstance(v, str) else str(v).lower()}" for key, v in values.items()]
    path = Path(folder) / f"run-config-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _status(folder: Path, run_id: int, timeout: float) -> dict | None:
    """The run's record from `flwr list`; None when the SuperLink does not answer."""
    try:
        listed = flwr(folder, "list", "--run-id", str(run_id), "--format", "json", timeout=timeout)
        return json.loads(listed.stdout)["runs"][0]
    except (subprocess.TimeoutExpired, ValueError, KeyError, IndexError):
        return None


def flwr_run(folder: str | Path, app_dir: str | Path, run_config: dict[str, str | bool],
             on_line=print, poll: float = 2.0, patience: float = 30.0, check_every: float = 30.0) -> dict:
    """`flwr run APP fedgen-local --run-config FILE`, then follow the run until it ends; returns its final record.

    The ServerApp's own lines are passed to ``on_line`` as they come (`flwr log --stream`). There is no deadline: a
    run lasts as long as it lasts. Ctrl-C (KeyboardInterrupt) stops the run on the SuperLink (`flwr stop`) and is
    raised again. A SuperLink that stops answering for ``patience`` seconds raises :class:`SuperLinkGone`. `flwr
    run` exits 0 even when the ServerApp fails, so the run's status is read back with `flwr list`: every
    ``check_every`` seconds while the log stream lasts (the SuperLink ends it when the run ends), every ``poll``
    seconds once it has ended (each `flwr list` is a Python process: about a second of CPU).
    """
    folder = Path(folder).resolve()
    started = flwr(folder, "run", str(app_dir), CONNECTION, "--run-config", str(run_config_file(folder, run_config)),
                   "--format", "json")
    if started.returncode != 0:
        raise RuntimeError(f"flwr run failed: {started.stdout[-1000:]} {started.stderr[-1000:]}")
    run_id = json.loads(started.stdout)["run-id"]
    logs = subprocess.Popen([_bin("flwr"), "log", str(run_id), CONNECTION, "--stream"], env=_env(folder),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    follower = threading.Thread(target=_follow, args=(logs, on_line), daemon=True)
    follower.start()
    try:
        silent_since = None
        while True:
            try:
                logs.wait(timeout=check_every)  # returns at once when the stream has ended
            except subprocess.TimeoutExpired:
                pass
            run = _status(folder, run_id, timeout=min(patience, 30))
            if run is not None and run["status"].startswith("finished"):
                return run
            if run is None:
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since > patience:
                    raise SuperLinkGone(f"the SuperLink stopped answering during run {run_id}")
            else:
                silent_since = None
            if logs.poll() is not None:
                time.sleep(poll)
    except KeyboardInterrupt:
        stopped = flwr(folder, "stop", str(run_id), CONNECTION)
        on_line(f"stopped run {run_id} on the SuperLink" if stopped.returncode == 0 else
                f"could not stop run {run_id} on the SuperLink: {stopped.stdout[-300:]} {stopped.stderr[-300:]}")
        raise
    finally:
        procs.stop([logs.pid], grace=2)
        follower.join(2)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _follow(logs: subprocess.Popen, on_line) -> None:
    """Pass on the run's log lines that fedgen's ServerApp printed (they start with '[<strategy> seed=...]') and its
    errors."""
    for line in logs.stdout:
        line = ANSI.sub("", line).rstrip()
        if line.startswith("[") or "ERROR" in line or "Traceback" in line:
            on_line(line)
