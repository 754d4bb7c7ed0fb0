"""A throwaway certificate authority and server certificate for the local stack's TLS (``stack_tls``).

Made once per state dir with the ``openssl`` CLI (``STATE_DIR/tls``, keys mode 0600): the server
certificate names ``127.0.0.1`` and ``localhost``, which is where the stack listens. Clients trust
``ca.crt`` (``STREAMREC_REDIS_TLS_CA``, ``STREAMREC_KAFKA_SSL_CAFILE``, written to credentials.env).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tools.stack.errors import StackError
from tools.stack.layout import StackLayout

SERVER_NAMES = "subjectAltName=IP:127.0.0.1,DNS:localhost"


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    server_pem: Path  # key + certificate in one file: Kafka's PEM keystore

    @classmethod
    def of(cls, layout: StackLayout) -> TlsFiles:
        d = layout.tls_dir
        return cls(d / "ca.crt", d / "ca.key", d / "server.crt", d / "server.key", d / "server.pem")

    def complete(self) -> bool:
        return all(path.is_file() for path in (self.ca_cert, self.server_cert, self.server_key, self.server_pem))


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise StackError("stack_tls needs the `openssl` command (apt-get install -y openssl)")
    result = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise StackError(f"openssl {args[0]} failed: {result.stderr.strip()[-2000:]}")


def ensure(layout: StackLayout) -> TlsFiles:
    """The stack's CA and server certificate, generated on the first call (kept afterwards)."""
    files = TlsFiles.of(layout)
    if files.complete():
        return files
    d = layout.tls_dir
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    (d / "server.ext").write_text(SERVER_NAMES + "\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", files.ca_key.name, "-out",
             files.ca_cert.name, "-days", "3650", "-subj", "/CN=streamrec local stack CA", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", files.server_key.name, "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", files.ca_cert.name, "-CAkey", files.ca_key.name,
             "-CAcreateserial", "-out", files.server_cert.name, "-days", "825", "-extfile", "server.ext", cwd=d)
    files.server_pem.write_text(files.server_key.read_text() + files.server_cert.read_text())
    for key in (files.ca_key, files.server_key, files.server_pem):
        key.chmod(0o600)
    return files
