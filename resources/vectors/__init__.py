"""The vectors stage: stored image embeddings and what is computed from them alone."""
