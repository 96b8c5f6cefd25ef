"""Slide retrieval on full or summarized bags (`wsisum-retrieve`): a second downstream use of summaries.

- `index`: every slide's patch features of one bag directory in one h5 file, reused while the bags are unchanged.
- `search`: leave-one-case-out search with Yottixel's median-of-minimum or the mean-embedding cosine distance.
- `metrics`: majority vote at 1/3/5, macro F1 of the vote at 5, mAP@5, query time.
- `run`: one run of the app: slides, index, searches, metrics.csv (evaluate's schema) and predictions.csv.
"""
