"""A real deployment on this machine: one SuperLink and N SuperNodes talking gRPC, as on separate machines.

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
import socket
import subprocess
import sys
import time
from pathlib import Path

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
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(folder / STATE_FILE)


def start_supernode(folder: str | Path, partition: int, num_partitions: int, key: Path | None = None) -> int:
    """Start one SuperNode for ``partition`` against the recorded SuperLink; its PID joins the record."""
    folder = Path(folder).resolve()
    state = load_state(folder)
    cmd = [
        _bin("flower-supernode"), "--superlink", f"{HOST}:{state['fleet_port']}",
        "--host", HOST, "--port", str(free_port()),
        "--node-config", f"partition-id={partition} num-partitions={num_partitions}",
    ]
    if state["secure"]:
        cmd += ["--root-certificates", state["ca"]]
        if key is not None:
            cmd += ["--auth-supernode-private-key", str(key)]
    else:
        cmd += ["--insecure"]
    pid = _start(folder, f"supernode-{partition}-{len(state['pids'])}", cmd)
    state["pids"].append(pid)
    _save_state(folder, state)
    return pid


def up(folder: str | Path, nodes: int, secure: bool = True, certs: str | Path | None = None) -> dict:
    """Start a SuperLink and ``nodes`` SuperNodes (partition i on node i); returns the recorded state."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / STATE_FILE).exists() and load_state(folder)["pids"]:
        raise RuntimeError(f"a deployment is already recorded in {folder}: run `fedgen deploy down` first")
    fleet, control = free_port(), free_port()
    home = folder / "flwr-home"
    home.mkdir(exist_ok=True)
    state = {"fleet_port": fleet, "control_port": control, "secure": secure, "pids": [], "nodes": nodes}
    cmd = [
        _bin("flower-superlink"), "--fleet-api-address", f"{HOST}:{fleet}", "--host", HOST, "--port", str(control),
        "--disable-runtime-dependency-installation", "--database", str(folder / "superlink.db"),
    ]
    connection = [
        f'[superlink]\ndefault = "{CONNECTION}"\n', f"[superlink.{CONNECTION}]", f'address = "{HOST}:{control}"'
    ]
    if secure:
        paths = make_certs(folder / "certs") if certs is None else {
            "ca": Path(certs) / "ca.crt", "cert": Path(certs) / "server.pem", "key": Path(certs) / "server.key"}
        for p in paths.values():
            if not p.is_file():
                raise FileNotFoundError(f"TLS file missing: {p}")
        state["ca"] = str(paths["ca"].resolve())
        cmd += ["--ssl-ca-certfile", str(paths["ca"]), "--ssl-certfile", str(paths["cert"]),
                "--ssl-keyfile", str(paths["key"]), "--enable-supernode-auth"]
        connection.append(f'root-certificates = "{state["ca"]}"')
    else:
        cmd += ["--insecure"]
        connection.append("insecure = true")
    (home / "config.toml").write_text("\n".join(connection) + "\n")
    state["pids"].append(_start(folder, "superlink", cmd))
    _save_state(folder, state)
    try:
        _wait_for_port(control, 60, "the SuperLink")
        _wait_for_port(fleet, 60, "the SuperLink's Fleet API")
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


def flwr_run(folder: str | Path, app_dir: str | Path, run_config: str, timeout: float = 600) -> dict:
    """`flwr run APP fedgen-local --run-config ...`, then wait for the run to end; returns its final record.

    `flwr run` exits 0 even when the ServerApp fails, so the run's status is read back with `flwr list`.
    """
    started = flwr(folder, "run", str(app_dir), CONNECTION, "--run-config", run_config, "--format", "json")
    if started.returncode != 0:
        raise RuntimeError(f"flwr run failed: {started.stdout[-1000:]} {started.stderr[-1000:]}")
    run_id = json.loads(started.stdout)["run-id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = flwr(folder, "list", "--run-id", str(run_id), "--format", "json")
        if listed.returncode == 0:
            run = json.loads(listed.stdout)["runs"][0]
            if run["status"].startswith("finished"):
                return run
        time.sleep(2)
    raise TimeoutError(f"run {run_id} did not finish within {timeout:.0f} s")
