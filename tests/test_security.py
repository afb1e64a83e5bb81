"""Server-side TLS, mutual TLS and bearer tokens (server/security/tokens.py,
server/transport/grpc/security.py), against real servers on port 0.

Certificates are made at test time with the openssl command; calls go through plain grpcio stubs so that
what is on the wire (metadata, credentials) is exactly what the test says.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.proto import grpc_service_pb2 as pb
from peregrine.proto import grpc_service_pb2_grpc as pb_grpc
from peregrine.server import cli
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig
from peregrine.server.security.tokens import CATEGORIES, UNKNOWN, TokenStore, category_of
from support import onnx_models
from support.certificates import Certificates, make_certificates

TOKEN = "tok-3f9a1c"
X = np.arange(6, dtype=np.float32).reshape(2, 3)
FRAME = det.StreamFrame(model_name="none", sequence=1)


def _infer_request() -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="identity_fp32",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=list(X.shape))],
        raw_input_contents=[X.tobytes()],
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("security_models")
    onnx_models.write(root, "identity_fp32", onnx_models.identity("FP32", ["N", None]))
    return root


def _write_pems(directory: Path, certs: Certificates) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    files = {"ca": certs.ca, "cert": certs.server_cert, "key": certs.server_key,
             "client_cert": certs.client_cert, "client_key": certs.client_key}
    paths = {}
    for name, data in files.items():
        tmp = directory / f".{name}.pem.new"
        tmp.write_bytes(data)
        os.replace(tmp, directory / f"{name}.pem")  # atomic, as a secret mount swaps its files
        paths[name] = directory / f"{name}.pem"
    return paths


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def secure_server(repo: Path, tmp_path: Path, certs: Certificates) -> Iterator[Callable[..., PeregrineServer]]:
    started: list[PeregrineServer] = []

    def start(*, mutual: bool = False, tokens: str | None = None, **options: object) -> PeregrineServer:
        pems = _write_pems(tmp_path / "server", certs)
        token_file = None
        if tokens is not None:
            token_file = tmp_path / "tokens"
            token_file.write_text(tokens)
        config = ServerConfig(model_repository=repo, grpc_port=0, http_port=None, tls_cert=pems["cert"],
                              tls_key=pems["key"], tls_client_ca=pems["ca"] if mutual else None,
                              auth_token_file=token_file, **options)  # type: ignore[arg-type]
        server = PeregrineServer(config)
        server.start()
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop(grace=0.5)


def _channel(port: int, certs: Certificates | None, client_cert: bool = False) -> grpc.Channel:
    if certs is None:
        return grpc.insecure_channel(f"localhost:{port}")
    creds = grpc.ssl_channel_credentials(certs.ca, certs.client_key if client_cert else None,
                                         certs.client_cert if client_cert else None)
    return grpc.secure_channel(f"localhost:{port}", creds)


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


# ---------------------------------------------------------------------------------------------- categories


def test_every_method_of_the_served_protocols_has_a_category() -> None:
    services = [pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
                det.DESCRIPTOR.services_by_name["DetectionService"]]
    for service in services:
        for method in service.methods:
            assert category_of(f"/{service.full_name}/{method.name}") != UNKNOWN, method.name
    assert category_of("/inference.GRPCInferenceService/ModelInfer") == "inference"
    assert category_of("/inference.GRPCInferenceService/ModelStreamInfer") == "inference"
    assert category_of("/inference.GRPCInferenceService/ModelReady") == "health"
    assert category_of("/inference.GRPCInferenceService/ModelMetadata") == "metadata"
    assert category_of("/inference.GRPCInferenceService/RepositoryModelLoad") == "model-repository"
    assert category_of("/inference.GRPCInferenceService/CudaSharedMemoryRegister") == "shared-memory"
    assert category_of("/peregrine.v1.DetectionService/DetectStream") == "inference"
    assert category_of("/grpc.health.v1.Health/Check") == "health"
    assert category_of("/some.Other/Method") == UNKNOWN


def test_bad_security_settings_are_refused_with_what_is_missing(tmp_path: Path, repo: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"unknown call category 'infer'.*expected some of health"):
        ServerConfig(auth_open=("infer",))
    with pytest.raises(ValueError, match="both a certificate"):
        ServerConfig(tls_cert=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="needs --tls-cert"):
        ServerConfig(tls_client_ca=tmp_path / "ca.pem")
    assert cli.main(["--model-repository", str(repo), "--tls-key", str(tmp_path / "k.pem")]) == 2
    assert "both a certificate" in capsys.readouterr().err
    assert set(CATEGORIES) >= {"health", "inference", "shared-memory", "model-repository", "logging"}


def test_token_file_comments_blank_lines_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# ops team\n\nalpha\n  beta  \n")
    store = TokenStore(path, reload_interval=0.0)
    assert store.accepts("alpha") and store.accepts("beta")
    assert not store.accepts("# ops team") and not store.accepts("") and not store.accepts("alph")
    path.write_text("gamma\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert store.accepts("gamma") and not store.accepts("alpha")
    path.write_text("# everything commented out\n")  # a broken rotation keeps the previous tokens
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000))
    assert store.accepts("gamma")
    empty = tmp_path / "empty"
    empty.write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="holds no token"):
        TokenStore(empty)


# ---------------------------------------------------------------------------------------------- TLS


def test_tls_serves_verified_clients_and_refuses_plain_text(secure_server: Callable[..., PeregrineServer],
                                                            certs: Certificates) -> None:
    server = secure_server()
    with _channel(server.port, certs) as ch:  # type: ignore[arg-type]
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        out = stub.ModelInfer(_infer_request(), timeout=10)
        np.testing.assert_array_equal(np.frombuffer(out.raw_output_contents[0], np.float32).reshape(2, 3), X)
    with _channel(server.port, None) as ch:  # type: ignore[arg-type]
        code, _ = _code(lambda: pb_grpc.GRPCInferenceServiceStub(ch).ServerLive(pb.ServerLiveRequest(), timeout=3))
        assert code == grpc.StatusCode.UNAVAILABLE
    # The server keeps serving after the failed handshake.
    with _channel(server.port, certs) as ch:  # type: ignore[arg-type]
        assert pb_grpc.GRPCInferenceServiceStub(ch).ServerReady(pb.ServerReadyRequest(), timeout=5).ready


def test_mutual_tls_needs_a_client_certificate(secure_server: Callable[..., PeregrineServer],
                                               certs: Certificates) -> None:
    server = secure_server(mutual=True)
    with _channel(server.port, certs, client_cert=True) as ch:  # type: ignore[arg-type]
        assert pb_grpc.GRPCInferenceServiceStub(ch).ServerLive(pb.ServerLiveRequest(), timeout=10).live
    with _channel(server.port, certs, client_cert=False) as ch:  # type: ignore[arg-type]
        code, _ = _code(lambda: pb_grpc.GRPCInferenceServiceStub(ch).ServerLive(pb.ServerLiveRequest(), timeout=3))
        assert code == grpc.StatusCode.UNAVAILABLE


def test_certificates_rotate_without_a_restart(secure_server: Callable[..., PeregrineServer],
                                               certs: Certificates, tmp_path: Path) -> None:
    server = secure_server()
    (tmp_path / "fresh").mkdir()
    fresh = make_certificates(tmp_path / "fresh")  # a new CA, a new server certificate
    _write_pems(tmp_path / "server", fresh)  # over the files the server was started with
    deadline = time.monotonic() + 10
    while True:  # the server looks for changed files at most once a second, on a new handshake
        with _channel(server.port, fresh) as ch:  # type: ignore[arg-type]
            code, _ = _code(lambda: pb_grpc.GRPCInferenceServiceStub(ch).ServerLive(pb.ServerLiveRequest(), timeout=2))
        if code == grpc.StatusCode.OK or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert code == grpc.StatusCode.OK
    with _channel(server.port, certs) as ch:  # type: ignore[arg-type]
        code, _ = _code(lambda: pb_grpc.GRPCInferenceServiceStub(ch).ServerLive(pb.ServerLiveRequest(), timeout=3))
        assert code == grpc.StatusCode.UNAVAILABLE  # the old CA no longer vouches for the server


# ---------------------------------------------------------------------------------------------- tokens


def test_tokens_guard_every_category_but_health(secure_server: Callable[..., PeregrineServer],
                                                certs: Certificates) -> None:
    server = secure_server(tokens=f"# test\n{TOKEN}\n")
    good = (("authorization", f"Bearer {TOKEN}"),)
    with _channel(server.port, certs) as ch:  # type: ignore[arg-type]
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        detect = det_grpc.DetectionServiceStub(ch)
        # health needs no token: probes work
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        assert stub.ModelReady(pb.ModelReadyRequest(name="identity_fp32"), timeout=5).ready
        check = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        guarded: dict[str, Callable[..., object]] = {
            "ModelInfer": lambda md: stub.ModelInfer(_infer_request(), timeout=5, metadata=md),
            "ModelMetadata": lambda md: stub.ModelMetadata(pb.ModelMetadataRequest(name="identity_fp32"),
                                                           timeout=5, metadata=md),
            "ModelStatistics": lambda md: stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=5, metadata=md),
            "RepositoryIndex": lambda md: stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=5, metadata=md),
            "SystemSharedMemoryStatus": lambda md: stub.SystemSharedMemoryStatus(
                pb.SystemSharedMemoryStatusRequest(), timeout=5, metadata=md),
            "LogSettings": lambda md: stub.LogSettings(pb.LogSettingsRequest(), timeout=5, metadata=md),
            "ModelStreamInfer": lambda md: list(stub.ModelStreamInfer(iter([_infer_request()]), timeout=5,
                                                                      metadata=md)),
            "DetectStream": lambda md: list(detect.DetectStream(iter([FRAME]), timeout=5, metadata=md)),
        }
        for name, call in guarded.items():
            code, message = _code(lambda: call(None))  # noqa: B023 (called at once)
            assert code == grpc.StatusCode.UNAUTHENTICATED, name
            assert name in message and "authorization: Bearer <token>" in message and "carried none" in message
            code, message = _code(lambda: call((("authorization", "Bearer nope"),)))  # noqa: B023
            assert code == grpc.StatusCode.UNAUTHENTICATED and "not accepted" in message, name
        code, message = _code(lambda: stub.ModelInfer(_infer_request(), timeout=5,
                                                      metadata=(("authorization", f"Basic {TOKEN}"),)))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "must read 'Bearer <token>'" in message
        # with the token, every call goes through to the servicer
        out = stub.ModelInfer(_infer_request(), timeout=10, metadata=good)
        assert out.model_name == "identity_fp32"
        assert stub.ModelMetadata(pb.ModelMetadataRequest(name="identity_fp32"), timeout=5, metadata=good).name
        responses = list(stub.ModelStreamInfer(iter([_infer_request()]), timeout=10, metadata=good))
        assert len(responses) == 1 and not responses[0].error_message
        code, message = _code(lambda: list(detect.DetectStream(iter([FRAME]), timeout=5, metadata=good)))
        assert code != grpc.StatusCode.UNAUTHENTICATED  # reached the servicer, which knows no model "none"
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="identity_fp32"), timeout=5, metadata=good)
        assert stats.model_stats[0].inference_stats.success.count == 2  # refused calls never ran


def test_open_categories_and_token_rotation(secure_server: Callable[..., PeregrineServer], certs: Certificates,
                                            tmp_path: Path) -> None:
    server = secure_server(tokens="first\n", auth_open=("health", "metadata"))
    with _channel(server.port, certs) as ch:  # type: ignore[arg-type]
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        assert stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=5).name == "peregrine"
        assert stub.ModelInfer(_infer_request(), timeout=10, metadata=(("authorization", "Bearer first"),))
        new = tmp_path / "tokens.new"
        new.write_text("second\n")
        shutil.move(new, tmp_path / "tokens")
        deadline = time.monotonic() + 10
        while True:
            code, _ = _code(lambda: stub.ModelInfer(_infer_request(), timeout=5,
                                                    metadata=(("authorization", "Bearer second"),)))
            if code == grpc.StatusCode.OK or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert code == grpc.StatusCode.OK
        code, _ = _code(lambda: stub.ModelInfer(_infer_request(), timeout=5,
                                                metadata=(("authorization", "Bearer first"),)))
        assert code == grpc.StatusCode.UNAUTHENTICATED


def test_scoped_tokens_reach_only_their_categories(secure_server: Callable[..., PeregrineServer],
                                                   certs: Certificates) -> None:
    """A token followed by categories may call only those: a camera's token runs inference but cannot
    unload models (PERMISSION_DENIED: who it is is known, what it asks is not allowed)."""
    server = secure_server(tokens="camera-7 inference,metadata\nops-token\n")
    with _channel(server.port, certs) as ch:  # type: ignore[arg-type]
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        camera = (("authorization", "Bearer camera-7"),)
        ops = (("authorization", "Bearer ops-token"),)
        assert stub.ModelInfer(_infer_request(), timeout=10, metadata=camera).model_name == "identity_fp32"
        assert stub.ModelMetadata(pb.ModelMetadataRequest(name="identity_fp32"), timeout=5, metadata=camera).name
        code, message = _code(lambda: stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="identity_fp32"), timeout=5, metadata=camera))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "RepositoryModelUnload (model-repository)" in message and "inference, metadata" in message
        assert stub.ModelReady(pb.ModelReadyRequest(name="identity_fp32"), timeout=5, metadata=camera).ready
        assert stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=5, metadata=ops).models


def test_a_token_file_with_an_unknown_category_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("ok-token\nbad-token inference,admin\n")
    with pytest.raises(ValueError, match=r"line 2: unknown call category 'admin'"):
        TokenStore(path)
    path.write_text("scoped inference\n")
    store = TokenStore(path)
    assert store.accepts("scoped", "inference") and not store.accepts("scoped", "logging")
    assert store.scope("nope") is False and store.scope("scoped") == frozenset({"inference"})
