"""The client's version, for ``--version``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# The client-only distribution (clients/pyproject.toml), then the server's: a development checkout installs
# only the latter, with the client's sources linked into it.
DISTRIBUTIONS = ("peregrine-client", "peregrine")


def client_version() -> str:
    """The installed version of ``peregrine.client``, or ``"unknown"`` when no distribution of it is installed
    (the sources run from a checkout)."""
    for name in DISTRIBUTIONS:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "unknown"
