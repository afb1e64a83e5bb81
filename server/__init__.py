"""Peregrine inference server."""
