"""TLS and mutual TLS on the gRPC port (service/tls.py, wired by service/server.py): real TLS
channels against a real server, with a throwaway CA, server and client certificates made by the
`openssl` command line at test time. The server name is "localhost" (the certificate's SAN)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from plexserve.cli import main
from plexserve.export import export_model
from plexserve.proto import grpc_service_pb2_grpc as pb_grpc
from plexserve.tls import TlsFiles
from tests.harness import RunningServer, infer_request, output_arrays
from tests.service.test_lifecycle import constant_model

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(
    OPENSSL is None, reason="the openssl command line is not installed (apt-get install openssl)"
)


def openssl(*args: str | Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def make_leaf(folder: Path, name: str, ca: tuple[Path, Path], usage: str) -> tuple[Path, Path]:
    """A certificate for `name` (also its DNS SAN) signed by `ca`, for serverAuth or clientAuth."""
    cert, key, request = (folder / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
    extensions = folder / f"{name}.ext"
    extensions.write_text(
        f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"
        f"keyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
    )
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", request, "-subj", f"/CN={name}",
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", request, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", extensions,
    )  # fmt: skip
    return cert, key


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    stranger: tuple[Path, Path]  # a client certificate from another CA
    other_ca: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = make_ca(folder, "test-ca"), make_ca(folder, "other-ca")
    return Pki(
        ca=ca[0],
        server=make_leaf(folder, "localhost", ca, "serverAuth"),
        client=make_leaf(folder, "client", ca, "clientAuth"),
        stranger=make_leaf(folder, "stranger", other_ca, "clientAuth"),
        other_ca=other_ca[0],
    )


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tls-repository")
    export_model(constant_model(3.0), root, "m")
    return root


@pytest.fixture(scope="module")
def tls_server(repository: Path, pki: Pki) -> Iterator[RunningServer]:
    server = RunningServer(repository, tls=TlsFiles(*pki.server))
    yield server
    server.close()


@pytest.fixture(scope="module")
def mtls_server(repository: Path, pki: Pki) -> Iterator[RunningServer]:
    server = RunningServer(repository, tls=TlsFiles(*pki.server, client_ca=pki.ca))
    yield server
    server.close()


def infer(channel: grpc.Channel) -> list[list[float]]:
    """One ModelInfer over `channel`; raises grpc.RpcError when the connection is refused."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    response = stub.ModelInfer(infer_request("m", {"x": np.ones((1, 2), np.float32)}), timeout=10)
    return output_arrays(response)["y"].tolist()


def tls_channel(
    server: RunningServer, ca: Path | None, client: tuple[Path, Path] | None = None
) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=client[1].read_bytes() if client else None,
        certificate_chain=client[0].read_bytes() if client else None,
    )
    return grpc.secure_channel(f"localhost:{server.server.grpc_port}", credentials)


def refused(channel: grpc.Channel) -> grpc.StatusCode:
    with channel, pytest.raises(grpc.RpcError) as error:
        infer(channel)
    return error.value.code()


def test_tls_serves_a_client_that_trusts_the_ca_and_refuses_plaintext(
    tls_server: RunningServer, pki: Pki
) -> None:
    with tls_channel(tls_server, pki.ca) as channel:
        assert infer(channel) == [[3.0]]
        assert infer(channel) == [[3.0]]  # (the connection is reused)
    plaintext = grpc.insecure_channel(f"localhost:{tls_server.server.grpc_port}")
    assert refused(plaintext) is grpc.StatusCode.UNAVAILABLE
    # The client checks the server too: a certificate from a CA it does not trust is refused.
    assert refused(tls_channel(tls_server, pki.other_ca)) is grpc.StatusCode.UNAVAILABLE
    # The HTTP port stays plain, for the kubelet's probes and Prometheus.
    ready = f"http://127.0.0.1:{tls_server.server.http.port}/v2/health/ready"
    assert urllib.request.urlopen(ready, timeout=10).status == 200


def test_mutual_tls_serves_only_clients_with_a_certificate_the_ca_signed(
    mtls_server: RunningServer, pki: Pki
) -> None:
    with tls_channel(mtls_server, pki.ca, pki.client) as channel:
        assert infer(channel) == [[3.0]]
    # tritonclient's own TLS arguments (in a subprocess: its protos clash with ours in-process)
    client = (
        "import sys, tritonclient.grpc as t\n"
        "c = t.InferenceServerClient(sys.argv[1], ssl=True, root_certificates=sys.argv[2],\n"
        "    private_key=sys.argv[3], certificate_chain=sys.argv[4])\n"
        "print(c.is_server_ready(), c.is_model_ready('m'))\n"
    )
    address = f"localhost:{mtls_server.server.grpc_port}"
    paths = [str(p) for p in (pki.ca, pki.client[1], pki.client[0])]
    finished = subprocess.run(
        [sys.executable, "-c", client, address, *paths], capture_output=True, text=True, timeout=60
    )
    assert finished.stdout.split() == ["True", "True"], finished.stderr
    assert refused(tls_channel(mtls_server, pki.ca)) is grpc.StatusCode.UNAVAILABLE
    assert refused(tls_channel(mtls_server, pki.ca, pki.stranger)) is grpc.StatusCode.UNAVAILABLE
    plaintext = grpc.insecure_channel(f"localhost:{mtls_server.server.grpc_port}")
    assert refused(plaintext) is grpc.StatusCode.UNAVAILABLE


def serve_error(capsys: pytest.CaptureFixture[str], repository: Path, *flags: str | Path) -> str:
    """`plexserve serve` with `flags`: it must stop at start with status 2; returns stderr."""
    argv = ["serve", f"--repo={repository}", "--grpc-port=0", "--http-port=0"]
    assert main([*argv, *map(str, flags)]) == 2
    return capsys.readouterr().err


def test_bad_tls_files_stop_the_server_at_start_naming_the_file(
    tmp_path: Path, repository: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = pki.server
    missing = tmp_path / "missing.crt"
    not_pem = tmp_path / "not-pem.key"
    not_pem.write_text("hello\n")
    encrypted = tmp_path / "encrypted.key"
    openssl("pkey", "-in", key, "-aes256", "-passout", "pass:secret", "-out", encrypted)

    error = serve_error(capsys, repository, "--tls-cert", missing, "--tls-key", key)
    assert f"--tls-cert {missing}: cannot read it: No such file or directory" in error
    error = serve_error(capsys, repository, "--tls-cert", cert, "--tls-key", pki.client[1])
    assert f"--tls-key {pki.client[1]} is not the private key of --tls-cert {cert}" in error
    error = serve_error(capsys, repository, "--tls-cert", cert, "--tls-key", not_pem)
    assert f"--tls-key {not_pem}: not a PEM file" in error
    error = serve_error(capsys, repository, "--tls-cert", key, "--tls-key", key)
    assert f"--tls-cert {key}: no PEM certificate in it" in error
    error = serve_error(capsys, repository, "--tls-cert", cert, "--tls-key", encrypted)
    assert f"--tls-key {encrypted}: the key is encrypted" in error
    error = serve_error(
        capsys, repository, "--tls-cert", cert, "--tls-key", key, "--tls-client-ca", key
    )
    assert f"--tls-client-ca {key}: no usable CA certificate in it" in error
    error = serve_error(capsys, repository, "--tls-cert", cert)
    assert "--tls-cert needs --tls-key" in error
    error = serve_error(capsys, repository, "--tls-client-ca", pki.ca)
    assert "--tls-client-ca needs --tls-cert and --tls-key" in error


def kubernetes_secret_volume(folder: Path, cert: Path, key: Path) -> TlsFiles:
    """tls.crt and tls.key as a Secret volume lays them out: links through `..data`, a link to a
    timestamped folder that an update replaces in one rename."""
    folder.mkdir()
    (folder / "tls.crt").symlink_to("..data/tls.crt")
    (folder / "tls.key").symlink_to("..data/tls.key")
    update_secret_volume(folder, cert, key)
    return TlsFiles(folder / "tls.crt", folder / "tls.key")


def update_secret_volume(folder: Path, cert: Path, key: Path) -> None:
    version = folder / f"..{len(list(folder.glob('..2*'))) + 2000}"
    version.mkdir()
    shutil.copy(cert, version / "tls.crt")
    shutil.copy(key, version / "tls.key")
    (folder / "..data_tmp").symlink_to(version.name)
    (folder / "..data_tmp").rename(folder / "..data")  # atomic, as the kubelet does it


def test_renewed_certificates_are_taken_without_a_restart(
    tmp_path: Path, repository: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    renewed_ca = make_ca(tmp_path, "renewed-ca")  # another CA: clients tell the two apart
    renewed = make_leaf(tmp_path, "localhost", renewed_ca, "serverAuth")
    files = kubernetes_secret_volume(tmp_path / "secret", *pki.server)
    server = RunningServer(repository, tls=files)
    try:
        first = tls_channel(server, pki.ca)
        assert infer(first) == [[3.0]]

        update_secret_volume(tmp_path / "secret", *renewed)
        with tls_channel(server, renewed_ca[0]) as channel:  # a new connection: the new one
            assert infer(channel) == [[3.0]]
        assert refused(tls_channel(server, pki.ca)) is grpc.StatusCode.UNAVAILABLE
        assert infer(first) == [[3.0]]  # a connection made before keeps its certificate
        first.close()
        assert server.server.certificates is not None
        assert server.server.certificates.reloads == 1

        # A renewal that cannot serve (a key of another certificate): logged, and the
        # certificate in use stays until the files change again.
        update_secret_volume(tmp_path / "secret", renewed[0], pki.client[1])
        with tls_channel(server, renewed_ca[0]) as channel:
            assert infer(channel) == [[3.0]]
        assert server.server.certificates.reloads == 1
        assert "the certificate files changed but cannot be used" in caplog.text
        assert "is not the private key of" in caplog.text
    finally:
        server.close()
