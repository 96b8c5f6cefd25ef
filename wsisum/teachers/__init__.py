"""Stage 3: slide-level teacher embeddings — per-teacher standardisation and fusion into targets."""
