"""Code generated from protos/ at build time (see setup.py); never edited by hand."""
