"""Prefect flows: where and when work runs; the engine (vqclip) decides what the work is."""
