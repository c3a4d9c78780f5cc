"""Tongban: the cross-province government service (跨省通办) interoperability gateway."""

__version__ = "0.1.0"
