"""Self-signed certificates for the TLS tests."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A key and a certificate for ``localhost`` (its own CA) in ``directory``."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    return key, cert


@dataclass(frozen=True)
class TlsFiles:
    folder: Path  # 0755: the database server's own user may enter it and read the certificate
    key: Path
    cert: Path

    @property
    def env(self) -> dict[str, str]:
        """The service's settings that turn TLS on with these files."""
        return {"QVL_TLS_CERT": str(self.cert), "QVL_TLS_KEY": str(self.key)}


def readable_tls_files(folder: Path) -> TlsFiles:
    """A certificate anyone may read (PL/Python verifies it as the database server's user)."""
    os.chmod(folder, 0o755)
    key, cert = self_signed(folder)
    os.chmod(cert, 0o644)
    return TlsFiles(folder, key, cert)
