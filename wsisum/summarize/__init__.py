"""Stage 5: run a sampler over a cohort and write summary bags (atomic, resumable, parallel)."""
