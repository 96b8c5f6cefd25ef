"""The study pipeline (`wsisum-pipeline`): the stages of a study run one after another in one run dir.

- `study`: `Study`, the resumable-stage runner (a stage is reused when its fingerprint is unchanged and
  its outputs exist), and `compose_stage`, an app's config inside the running study.

The stages themselves are the apps' functions; `wsisum/apps/pipeline.py` wires them together.
"""
