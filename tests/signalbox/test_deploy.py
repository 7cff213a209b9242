"""deploy/ only names settings that exist (a renamed flag must not leave a dead env var behind),
and its stop timeouts leave a node time to drain."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dataplane.node_settings import NodeSettings
from signalbox import settings
from signalbox.shell.cli import build_parser
from tests.packaging.conftest import SOURCES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
FILES = sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix != ".md")


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_deploy_files_name_only_real_settings(path: Path) -> None:
    build_parser()
    known = {s.env for s in settings.REGISTRY.values()}

    named = set(re.findall(r"\b(SIGNALBOX_[A-Z0-9_]+)=", path.read_text()))

    assert named <= known, f"{path.name} sets unknown settings: {sorted(named - known)}"


def test_units_start_each_plane_with_its_env_file() -> None:
    for plane in ("controlplane", "dataplane"):
        unit = (DEPLOY / "systemd" / f"signalbox-{plane}.service").read_text()
        assert f"EnvironmentFile=/etc/signalbox/{plane}.env" in unit
        assert f"ExecStart=/opt/signalbox/venv/bin/signalbox {plane} serve" in unit
        assert (DEPLOY / "systemd" / f"{plane}.env").exists()


def test_deploy_installs_the_wheel_not_a_checkout() -> None:
    for path in [*FILES, DEPLOY / "README.md"]:
        text = path.read_text()
        assert not re.search(r"pip install[^\n]*(\s-e\s|--editable)", text), f"{path.name}: editable install"
    containerfile = (DEPLOY / "Containerfile").read_text()
    assert "pip wheel" in containerfile
    assert re.search(r"pip install [^\n]*\.whl\)?\[controlplane\]", containerfile)


def test_the_container_build_copies_everything_the_wheel_is_built_from() -> None:
    containerfile = (DEPLOY / "Containerfile").read_text()
    copied = {
        name
        for line in re.findall(r"^COPY (?!--from)(.+)$", containerfile, re.MULTILINE)
        for name in line.split()[:-1]
    }

    assert set(SOURCES) <= copied


def _settings(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\s*(?:ENV\s+)?(SIGNALBOX_[A-Z0-9_]+)=(\S+?)\s*\\?$", text, re.MULTILINE))


@pytest.mark.parametrize(
    ("path", "prefix"),
    [
        (DEPLOY / "systemd" / "controlplane.env", "SIGNALBOX_CONTROLPLANE"),
        (DEPLOY / "systemd" / "dataplane.env", "SIGNALBOX_DATAPLANE"),
        (DEPLOY / "Containerfile", "SIGNALBOX_CONTROLPLANE"),
        (DEPLOY / "Containerfile", "SIGNALBOX_DATAPLANE"),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else v,
)
def test_a_public_listen_in_deploy_serves_tls_not_plaintext(path: Path, prefix: str) -> None:
    from signalbox.tls import ServerTls, is_loopback

    values = _settings(path.read_text())
    listen = values[f"{prefix}_LISTEN"]
    assert not is_loopback(listen)
    assert values.get(f"{prefix}_INSECURE", "") in ("", "0", "false")
    cert, key = values.get(f"{prefix}_TLS_CERT"), values.get(f"{prefix}_TLS_KEY")
    assert cert, f"{path.name}: {prefix}_LISTEN={listen} without {prefix}_TLS_CERT"
    assert key, f"{path.name}: {prefix}_LISTEN={listen} without {prefix}_TLS_KEY"
    assert cert.startswith("/etc/signalbox/tls/")
    assert key.startswith("/etc/signalbox/tls/")
    # And without them the server would refuse to start:
    with pytest.raises(ValueError, match="refusing to serve plaintext"):
        ServerTls().credentials(listen)


def test_deployed_nodes_verify_the_control_plane_certificate() -> None:
    node = _settings((DEPLOY / "systemd" / "dataplane.env").read_text())
    assert node["SIGNALBOX_CONTROL_PLANE_CA"].startswith("/etc/signalbox/tls/")
    cp = _settings((DEPLOY / "systemd" / "controlplane.env").read_text())
    # Nodes sync on the node port (mutual TLS with enrolled certificates), enroll on the admin
    # port with a token from a file (never a flag), and do not override their identity.
    node_port = cp["SIGNALBOX_CONTROLPLANE_NODE_LISTEN"].rsplit(":", 1)[1]
    admin_port = cp["SIGNALBOX_CONTROLPLANE_LISTEN"].rsplit(":", 1)[1]
    assert node["SIGNALBOX_CONTROL_PLANE"].endswith(f":{node_port}")
    assert node["SIGNALBOX_ENROLL_ADDRESS"].endswith(f":{admin_port}")
    assert node.get("SIGNALBOX_ENROLL_TOKEN_FILE")
    assert "SIGNALBOX_ENROLL_TOKEN" not in node
    assert "SIGNALBOX_CONTROL_PLANE_CERT" not in node
    image = _settings((DEPLOY / "Containerfile").read_text())
    assert image["SIGNALBOX_CONTROL_PLANE_CA"].startswith("/etc/signalbox/tls/")


def test_stop_timeouts_leave_a_node_its_drain_and_its_evidence_drain() -> None:
    """Killed earlier, a stopping node leaves the evidence of its last requests on a disk
    that may go with it (a container removed, a pod rescheduled)."""
    defaults = NodeSettings()
    needed = defaults.drain_seconds + defaults.evidence_drain
    unit = (DEPLOY / "systemd" / "signalbox-dataplane.service").read_text()
    (stop,) = re.findall(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE)
    assert int(stop) > needed
    readme = (DEPLOY / "README.md").read_text()
    runs = re.findall(r"^podman run [^\n]*", readme, re.MULTILINE)
    assert runs
    for run in runs:
        timeout = re.search(r"--stop-timeout (\d+)", run)
        assert timeout is not None, run
        assert int(timeout.group(1)) > needed, run
