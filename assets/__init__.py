"""The pipeline's assets, one module per stage: raw release -> catalog -> images -> embeddings -> index."""
