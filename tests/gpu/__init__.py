"""The GPU checks as tests (marker `gpu`, skipped without CUDA) and the helpers that measure them."""
