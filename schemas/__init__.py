"""Typed contracts: the only code that producers and consumers share."""
