"""The engine: batched VQGAN+CLIP optimisation, cutouts and augmentations, speed switches and CLIP scoring.

Pure computation on tensors and pixels: it knows nothing of stores, runs, Prefect or the command line.
"""
