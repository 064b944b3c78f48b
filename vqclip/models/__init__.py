"""Models: the named registry, weight download and cache, and the VQGAN and CLIP loaders."""
