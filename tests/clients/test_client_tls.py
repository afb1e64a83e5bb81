"""TLS (server-authenticated and mutual) and bearer tokens.

The Peregrine server binds insecure ports only, so its own servicer (the real one, over the real model
repository) is also registered on a grpc.server with a TLS port. Certificates are made at test time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import client_support
import grpc
import numpy as np
import pytest
from client_support import Certificates, make_certificates, serve
from peregrine.client import AsyncInferenceClient, InferenceClient, PeregrineClientError, TlsOptions
from peregrine.server.app import PeregrineServer

# Fixtures shared with the other client tests (see client_support).
peregrine_server = client_support.peregrine_server

TOKEN = "s3cret-token"
X = {"INPUT0": np.arange(6, dtype=np.float32).reshape(2, 3)}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}"

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        if dict(details.invocation_metadata).get("authorization") == self.expected:
            return continuation(details)

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        return grpc.unary_unary_rpc_method_handler(deny)


def _tls_server(server: PeregrineServer, certs: Certificates, client_auth: bool,
                interceptors: tuple[grpc.ServerInterceptor, ...] = ()) -> Any:
    creds = grpc.ssl_server_credentials([(certs.server_key, certs.server_cert)],
                                        root_certificates=certs.ca if client_auth else None,
                                        require_client_auth=client_auth)
    return serve(server.servicer, credentials=creds, interceptors=interceptors)


@pytest.fixture(scope="module")
def tls_port(peregrine_server: PeregrineServer, certs: Certificates) -> Iterator[int]:
    with _tls_server(peregrine_server, certs, client_auth=False) as port:
        yield port


@pytest.fixture(scope="module")
def mtls_port(peregrine_server: PeregrineServer, certs: Certificates) -> Iterator[int]:
    with _tls_server(peregrine_server, certs, client_auth=True,
                     interceptors=(BearerTokenInterceptor(TOKEN),)) as port:
        yield port


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
