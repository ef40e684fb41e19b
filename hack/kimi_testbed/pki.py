"""Certificates and keys for a local control plane, made with the ``openssl`` command line tool.

One CA signs everything: the kube-apiserver serving cert (valid for 127.0.0.1 and the in-cluster names), and one
loopback serving cert shared by kube-controller-manager, kube-scheduler and the LeaderWorkerSet webhook server.
The service-account signing key pair is plain RSA. Nothing here is secret: the files live in the cluster dir and
die with it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CA_SUBJECT = "/CN=kimi-testbed-ca"
APISERVER_SANS = (
    "IP:127.0.0.1",
    "IP:10.96.0.1",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)
LOOPBACK_SANS = ("IP:127.0.0.1", "DNS:localhost")


@dataclass(frozen=True)
class Pki:
    """Paths of the generated files."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def apiserver_crt(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def loopback_crt(self) -> Path:
        return self.dir / "loopback.crt"

    @property
    def loopback_key(self) -> Path:
        return self.dir / "loopback.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def complete(self) -> bool:
        files = (
            self.ca_crt,
            self.ca_key,
            self.apiserver_crt,
            self.apiserver_key,
            self.loopback_crt,
            self.loopback_key,
            self.sa_key,
            self.sa_pub,
        )
        return all(f.is_file() and f.stat().st_size > 0 for f in files)


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr.strip()}")


def _ec_key(path: Path, cwd: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path), cwd=cwd)


def _signed_cert(pki: Pki, name: str, subject: str, sans: tuple[str, ...], usage: str) -> None:
    key = pki.dir / f"{name}.key"
    csr = pki.dir / f"{name}.csr"
    ext = pki.dir / f"{name}.ext"
    _ec_key(key, pki.dir)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr), cwd=pki.dir)
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n" + (f"subjectAltName={','.join(sans)}\n" if sans else "")
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(pki.ca_crt),
        "-CAkey",
        str(pki.ca_key),
        "-CAcreateserial",
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        str(ext),
        "-out",
        str(pki.dir / f"{name}.crt"),
        cwd=pki.dir,
    )
    csr.unlink()
    ext.unlink()


def ensure_client_cert(pki: Pki, name: str, subject: str) -> tuple[Path, Path]:
    """A client certificate ``<name>.crt``/``.key`` for ``subject`` (``/CN=user/O=group``), made once per cluster."""
    crt, key = pki.dir / f"{name}.crt", pki.dir / f"{name}.key"
    if not (crt.is_file() and key.is_file()):
        _signed_cert(pki, name, subject, (), "clientAuth")
        key.chmod(0o600)
    return crt, key


def ensure_pki(directory: Path) -> Pki:
    """Create (once) the CA, serving certs and service-account keys under ``directory``."""
    pki = Pki(directory)
    if pki.complete():
        return pki
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command line tool is needed to make the test cluster's certificates")
    directory.mkdir(parents=True, exist_ok=True)
    _ec_key(pki.ca_key, directory)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        str(pki.ca_key),
        "-subj",
        CA_SUBJECT,
        "-days",
        "3650",
        "-sha256",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        "-out",
        str(pki.ca_crt),
        cwd=directory,
    )
    _signed_cert(pki, "apiserver", "/CN=kube-apiserver", APISERVER_SANS, "serverAuth")
    _signed_cert(pki, "loopback", "/CN=kimi-testbed-loopback", LOOPBACK_SANS, "serverAuth")
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(pki.sa_key), cwd=directory)
    _openssl("pkey", "-in", str(pki.sa_key), "-pubout", "-out", str(pki.sa_pub), cwd=directory)
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return pki
