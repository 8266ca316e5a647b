"""Prefect flows and the command line. Importing the package sets up the environment first (flows/env.py):
Prefect reads it at import, and every entry point imports this package before any of its modules."""

from flows.env import configure

configure()
