"""TLS for the gRPC port: the server's credentials from `--tls-cert`, `--tls-key` and, for mutual
TLS, `--tls-client-ca`.

Called by the composition root (service/server.py) before anything listens. The files are read
and checked here, with Python's own `ssl` module, because gRPC reports a bad file only at the
first handshake, as a refused connection: a key that does not match its certificate, or a file
that is not PEM, stops the server at start with a SettingsError naming the file.

Renewed certificates are taken without a restart (cert-manager, a Kubernetes Secret updated in
place): before each new connection's handshake, gRPC asks `CertificateReloader` (from one of its
own threads), which looks at the files' inode, size and modification time, and reads and checks
them again when they changed. Connections already open keep the certificate they began with. A
changed set that cannot be used (a key not yet matching its new certificate, half-written files)
is logged and the previous certificate stays until the files change again.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from plexserve.settings import SettingsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # PEM: the server's certificate, then any intermediates
    key: Path  # PEM: its private key, unencrypted
    client_ca: Path | None = None  # PEM: CAs whose client certificates are accepted (mTLS)


def tls_files(cert: Path | None, key: Path | None, client_ca: Path | None) -> TlsFiles | None:
    """The flags' files, or None when TLS is off; an incomplete set is an error."""
    if cert is None and key is None:
        if client_ca is not None:
            raise SettingsError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS)")
        return None
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
        raise SettingsError(f"{given} needs {missing}: TLS takes both")
    return TlsFiles(cert, key, client_ca)


def _read(flag: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SettingsError(f"{flag} {path}: cannot read it: {error.strerror}") from None
    if b"-----BEGIN " not in data:
        raise SettingsError(f"{flag} {path}: not a PEM file (no '-----BEGIN' line)")
    return data


def certificate_configuration(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
    """The files, read and checked (SettingsError naming the file when they cannot serve)."""
    cert = _read("--tls-cert", files.cert)
    key = _read("--tls-key", files.key)
    if b"ENCRYPTED" in key:
        raise SettingsError(f"--tls-key {files.key}: the key is encrypted; give it unencrypted")
    check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        check.load_cert_chain(files.cert, files.key, password=b"")  # never prompts
    except ssl.SSLError as error:
        if "KEY_VALUES_MISMATCH" in str(error):
            reason = f"--tls-key {files.key} is not the private key of --tls-cert {files.cert}"
        elif b"PRIVATE KEY-----" not in key:
            reason = f"--tls-key {files.key}: no PEM private key in it"
        elif b"CERTIFICATE-----" not in cert:
            reason = f"--tls-cert {files.cert}: no PEM certificate in it"
        else:
            reason = (
                f"--tls-cert {files.cert} / --tls-key {files.key}: cannot load them: "
                f"{error.reason or error}"
            )
        raise SettingsError(reason) from None
    client_ca = None
    if files.client_ca is not None:
        client_ca = _read("--tls-client-ca", files.client_ca)
        try:
            check.load_verify_locations(cafile=files.client_ca)
        except ssl.SSLError as error:
            raise SettingsError(
                f"--tls-client-ca {files.client_ca}: no usable CA certificate in it "
                f"({error.reason or error})"
            ) from None
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)


Fingerprint = tuple[tuple[int, int, int] | None, ...]


class CertificateReloader:
    """gRPC's certificate-configuration fetcher: called before every TLS handshake, from gRPC's
    threads; returns the files' new configuration when they changed since the last load, else
    None (no change). Cheap when nothing changed: one stat() per file."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._paths = [p for p in (files.cert, files.key, files.client_ca) if p is not None]
        self._lock = threading.Lock()
        self._loaded = self._fingerprint()
        self.initial = certificate_configuration(files)  # raises: the server does not start
        self._refused: Fingerprint | None = None  # a changed set that could not be used
        self.reloads = 0

    def _fingerprint(self) -> Fingerprint:
        prints: list[tuple[int, int, int] | None] = []
        for path in self._paths:
            try:
                stat = path.stat()  # (follows symlinks: a Kubernetes Secret's ..data swap)
            except OSError:
                prints.append(None)
            else:
                prints.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
        return tuple(prints)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            current = self._fingerprint()
            if current in (self._loaded, self._refused):
                return None
            with self._lock:  # (handshakes run on several threads)
                if current in (self._loaded, self._refused):
                    return None
                try:
                    configuration = certificate_configuration(self.files)
                except SettingsError as error:
                    self._refused = current
                    log.error(
                        "TLS: the certificate files changed but cannot be used, the previous "
                        "certificate stays: %s",
                        error,
                    )
                    return None
                self._loaded, self._refused = current, None
                self.reloads += 1
            log.info("TLS: certificate reloaded from %s", self.files.cert)
            return configuration
        except Exception:  # never fail a handshake over a reload: keep what serves
            log.exception("TLS: checking the certificate files failed")
            return None


def server_credentials(files: TlsFiles) -> tuple[grpc.ServerCredentials, CertificateReloader]:
    """gRPC server credentials that follow the files; with `client_ca`, clients must present a
    certificate it signed. Raises SettingsError when the files cannot serve now."""
    reloader = CertificateReloader(files)
    credentials = grpc.dynamic_ssl_server_credentials(
        reloader.initial,
        reloader,
        require_client_authentication=files.client_ca is not None,
    )
    return credentials, reloader
