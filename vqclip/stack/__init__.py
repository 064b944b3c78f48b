"""The local stack (operations, not engine): a temporary Prefect API server, SeaweedFS, and `vqclip up`'s
supervised Prefect server, workers and browse view. The engine, run state and storage never import it."""
