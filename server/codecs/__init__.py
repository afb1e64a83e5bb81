"""The only place wire formats become plain requests and arrays, and results become wire formats.

Codecs call no model: they turn protobuf messages into the plain types of :mod:`peregrine.server.core`
(zero-copy where the wire allows it) and back.
"""
