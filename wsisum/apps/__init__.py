"""Thin Hydra entry points: compose config, instantiate, call the stages. No logic of their own."""
