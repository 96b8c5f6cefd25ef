"""Stage 4: neural network modules: MIL heads for downstream tasks (`wsisum.models.mil`) and the summarizer.

Submodules are imported explicitly (`from wsisum.models.mil import ABMIL`), so importing one never
pulls in the dependencies of the others.
"""
