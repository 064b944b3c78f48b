"""Prefect tasks: thin wrappers over the engine, with retries declared on the decorator."""
