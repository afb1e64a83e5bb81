"""Triton's LogSettings extension through tritonclient: read, change, reject bad keys and types."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import tritonclient.grpc as tc
from peregrine.server.app import PeregrineServer


@pytest.fixture
def client(server: PeregrineServer) -> Iterator[tc.InferenceServerClient]:
    logger = logging.getLogger("peregrine")
    level = logger.level
    c = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield c
    c.close()
    logger.setLevel(level)
    server.dataplane.log_settings.update({"log_verbose_level": 0, "log_info": True, "log_warning": True,
                                         "log_error": True, "log_format": "default"})


def test_read_and_change_log_levels(client: tc.InferenceServerClient) -> None:
    settings = client.get_log_settings(as_json=True)["settings"]
    assert set(settings) == {"log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format"}
    updated = client.update_log_settings({"log_verbose_level": 1}, as_json=True)["settings"]
    assert updated["log_verbose_level"]["uint32_param"] == 1
    assert logging.getLogger("peregrine.server.models.tensor").isEnabledFor(logging.DEBUG)
    client.update_log_settings({"log_verbose_level": 0, "log_info": False, "log_warning": True})
    logger = logging.getLogger("peregrine.server.models.tensor")
    assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
    assert "logging" in client.get_server_metadata(as_json=True)["extensions"]


@pytest.mark.parametrize("settings", [{"log_colour": True}, {"log_format": "fancy"}, {"log_info": None},
                                      {"log_file": "/tmp/elsewhere.log"}])
def test_bad_settings_over_http_are_400_and_grpc_reads_on(server: PeregrineServer, client: tc.InferenceServerClient,
                                                          settings: dict[str, object]) -> None:
    """Over HTTP too; and a verbose level outside Triton's uint32 (-1, 2^70), which JSON can carry and the
    gRPC LogSettings message cannot, is refused instead of breaking every later gRPC read."""
    import json
    import urllib.error
    import urllib.request

    for body in (settings, {"log_verbose_level": -1}, {"log_verbose_level": 2**70}):
        request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/v2/logging",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=10)
        e.value.close()
        assert e.value.code == 400, body
    assert client.get_log_settings(as_json=True)["settings"]["log_verbose_level"]["uint32_param"] in (0, 1)


@pytest.mark.parametrize("settings", [{"log_colour": True}, {"log_format": "fancy"}, {"log_info": None},
                                      {"log_file": "/tmp/elsewhere.log"}])
def test_bad_settings_are_invalid_argument(client: tc.InferenceServerClient, settings: dict[str, object]) -> None:
    before = client.get_log_settings(as_json=True)
    with pytest.raises(tc.InferenceServerException) as e:
        client.update_log_settings(settings)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.get_log_settings(as_json=True) == before  # nothing applied


def test_wrong_value_type_is_invalid_argument(server: PeregrineServer) -> None:
    import grpc
    from peregrine.proto import grpc_service_pb2 as pb
    from peregrine.proto import grpc_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.LogSettingsRequest()
        request.settings["log_info"].uint32_param = 3
        with pytest.raises(grpc.RpcError) as e:
            stub.LogSettings(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
