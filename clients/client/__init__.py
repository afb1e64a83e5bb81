"""Peregrine client library."""
