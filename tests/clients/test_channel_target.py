"""How a client's address becomes a gRPC target: one address, several (client-side round-robin), a scheme."""

from __future__ import annotations

import pytest
from peregrine.client.channel import ChannelSettings, balanced, grpc_target


@pytest.mark.parametrize(("url", "target"), [
    ("127.0.0.1:8001", "127.0.0.1:8001"),
    ("10.0.0.1:8001, 10.0.0.2:8001", "ipv4:10.0.0.1:8001,10.0.0.2:8001"),
    (["10.0.0.1:8001", "10.0.0.2:8001"], "ipv4:10.0.0.1:8001,10.0.0.2:8001"),
    ("[::1]:8001,[::1]:8002", "ipv6:[::1]:8001,[::1]:8002"),
    # A target already in gRPC's spelling is kept as it is, lists of addresses included.
    ("ipv4:10.0.0.1:8001,10.0.0.2:8001", "ipv4:10.0.0.1:8001,10.0.0.2:8001"),
    ("dns:///peregrine.default.svc:8001", "dns:///peregrine.default.svc:8001"),
    ("unix:/run/peregrine.sock", "unix:/run/peregrine.sock"),
])
def test_targets(url: str | list[str], target: str) -> None:
    assert grpc_target(url) == target


def test_settings_built_directly_spell_a_list_as_grpc_does() -> None:
    settings = ChannelSettings(target="127.0.0.1:8981,127.0.0.1:8982")
    assert settings.target == "ipv4:127.0.0.1:8981,127.0.0.1:8982" and balanced(settings.target)


@pytest.mark.parametrize("url", ["", " , ", "camera-1:8001,camera-2:8001"])
def test_what_cannot_be_a_target_says_why(url: str) -> None:
    with pytest.raises(ValueError, match="url: "):
        grpc_target(url)
