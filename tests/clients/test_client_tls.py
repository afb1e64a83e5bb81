"""TLS (server-authenticated and mutual) and bearer tokens, against Peregrine servers started with their
own TLS and token settings. Certificates are made at test time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from client_support import Certificates, make_certificates
from peregrine.client import AsyncInferenceClient, InferenceClient, PeregrineClientError, TlsOptions
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig
from support import onnx_models

TOKEN = "s3cret-token"
X = {"INPUT0": np.arange(6, dtype=np.float32).reshape(2, 3)}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _secure_server(root: Path, certs: Certificates, mutual: bool) -> PeregrineServer:
    onnx_models.write(root, "identity_fp32", onnx_models.identity("FP32", ["N", None]))
    for name, data in (("server.pem", certs.server_cert), ("server.key", certs.server_key), ("ca.pem", certs.ca)):
        (root / name).write_bytes(data)
    token_file = None
    if mutual:
        token_file = root / "tokens"
        token_file.write_text(f"{TOKEN}\n")
    server = PeregrineServer(ServerConfig(
        model_repository=root, grpc_port=0, http_port=None, tls_cert=root / "server.pem",
        tls_key=root / "server.key", tls_client_ca=root / "ca.pem" if mutual else None, auth_token_file=token_file))
    server.start()
    return server


@pytest.fixture(scope="module")
def tls_port(tmp_path_factory: pytest.TempPathFactory, certs: Certificates) -> Iterator[int]:
    server = _secure_server(tmp_path_factory.mktemp("tls"), certs, mutual=False)
    yield server.port  # type: ignore[misc]
    server.stop(grace=0.5)


@pytest.fixture(scope="module")
def mtls_port(tmp_path_factory: pytest.TempPathFactory, certs: Certificates) -> Iterator[int]:
    server = _secure_server(tmp_path_factory.mktemp("mtls"), certs, mutual=True)
    yield server.port  # type: ignore[misc]
    server.stop(grace=0.5)


def test_tls_with_the_server_certificate_checked(tls_port: int, certs: Certificates) -> None:
    with InferenceClient(f"localhost:{tls_port}", tls=TlsOptions(certs.ca), deadline_s=10) as client:
        np.testing.assert_array_equal(client.infer("identity_fp32", X)["OUTPUT0"], X["INPUT0"])
    # The certificate also names 127.0.0.1.
    with InferenceClient(f"127.0.0.1:{tls_port}", tls=TlsOptions(certs.ca), deadline_s=10) as client:
        assert client.server_ready()


def test_tls_fails_without_the_right_ca_or_in_plain_text(tls_port: int, certs: Certificates) -> None:
    for tls in (TlsOptions(certs.client_cert), None):  # a CA that did not sign the server's cert; no TLS
        with InferenceClient(f"localhost:{tls_port}", tls=tls, deadline_s=5) as client:
            with pytest.raises(PeregrineClientError) as e:
                client.infer("identity_fp32", X)
            assert e.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_and_bearer_token(mtls_port: int, certs: Certificates, tmp_path: Path) -> None:
    for name, data in (("ca.pem", certs.ca), ("client.pem", certs.client_cert), ("client.key", certs.client_key)):
        (tmp_path / name).write_bytes(data)
    tls = TlsOptions.from_files(ca=tmp_path / "ca.pem", cert=tmp_path / "client.pem", key=tmp_path / "client.key")
    with InferenceClient(f"localhost:{mtls_port}", tls=tls, token=TOKEN, deadline_s=10) as client:
        np.testing.assert_array_equal(client.infer("identity_fp32", X)["OUTPUT0"], X["INPUT0"])
    with InferenceClient(f"localhost:{mtls_port}", tls=tls, token="wrong", deadline_s=10) as client:
        with pytest.raises(PeregrineClientError) as e:
            client.infer("identity_fp32", X)
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    no_client_cert = TlsOptions(certs.ca)
    with InferenceClient(f"localhost:{mtls_port}", tls=no_client_cert, token=TOKEN, deadline_s=5) as client:
        with pytest.raises(PeregrineClientError) as e:
            client.infer("identity_fp32", X)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE


def test_async_client_over_mutual_tls(mtls_port: int, certs: Certificates) -> None:
    tls = TlsOptions(certs.ca, certs.client_key, certs.client_cert)

    async def main() -> np.ndarray:
        async with AsyncInferenceClient(f"localhost:{mtls_port}", tls=tls, token=TOKEN, deadline_s=10) as client:
            return (await client.infer("identity_fp32", X))["OUTPUT0"]

    np.testing.assert_array_equal(asyncio.run(main()), X["INPUT0"])


def test_tls_options_need_key_and_certificate_together(certs: Certificates) -> None:
    with pytest.raises(ValueError):
        TlsOptions(certs.ca, private_key=certs.client_key)
