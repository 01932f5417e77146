"""Prefect flows and the `cloud-screen` command line."""
