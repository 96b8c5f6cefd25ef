"""Stage 4: LightningModules (MIL slide classification; summarizer pretraining beside it)."""
