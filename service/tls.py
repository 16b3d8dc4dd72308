"""TLS for the gRPC port: the server's credentials from `--tls-cert`, `--tls-key` and, for mutual
TLS, `--tls-client-ca`.

Called by the composition root (service/server.py) before anything listens. The files are read
and checked here, with Python's own `ssl` module, because gRPC reports a bad file only at the
first handshake, as a refused connection: a key that does not match its certificate, or a file
that is not PEM, stops the server at start with a SettingsError naming the file. Files are read
once: a renewed certificate takes effect at the next start.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from service.settings import SettingsError


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


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """gRPC server credentials; with `client_ca`, clients must present a certificate it signed."""
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
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
