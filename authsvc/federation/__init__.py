"""Federated login: verifying a trusted issuer's assertions (Net-entreprises), their keys, their
single use, and a development issuer for local runs and tests."""
