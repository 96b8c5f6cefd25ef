"""One failure policy for both summarize paths (process pool and Lightning/DDP): any exception on a
slide is that slide's failure and the rest go on; `stop_on_error` (data.on_bad_slide=error) stops at
the first failure, on every rank."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsisum.data.cohort import Cohort
from wsisum.sampling.samplers import RandomSampler
from wsisum.summarize.run import summarize_cohort

BUDGET = 2


class FailsOn(RandomSampler):
    """Random summaries, except an unexpected crash (not an InputError) on the slides in `bad`."""

    def __init__(self, bad: tuple[str, ...]):
        super().__init__(0)
        self.bad = bad

    def _select(self, features, budget, rng, coords, slide_id, **context):
        if slide_id in self.bad:
            raise RuntimeError(f"boom on {slide_id}")
        return super()._select(features, budget, rng, coords, slide_id, **context)


def _trainer():
    import lightning as L

    return L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_progress_bar=False)


@pytest.mark.parametrize("path", ["pool", "ddp"])
def test_an_unexpected_crash_fails_that_slide_only(tmp_path: Path, small_cohort, path: str) -> None:
    root, feats = small_cohort
    bad = "dsA-003"
    trainer = _trainer() if path == "ddp" else None
    workers = 2 if path == "pool" else 0
    report = summarize_cohort(
        Cohort(root), FailsOn((bad,)), BUDGET, tmp_path / "s", workers=workers, trainer=trainer, progress=False
    )
    assert set(report.failed) == {bad}
    assert report.failed[bad].endswith(f"dsA/{bad}.h5: unexpected RuntimeError: boom on {bad}")
    assert sorted(report.done) == sorted(set(feats) - {bad})


@pytest.mark.parametrize("path", ["single", "ddp"])
def test_stop_on_error_stops_at_the_first_failure(tmp_path: Path, small_cohort, path: str) -> None:
    root, feats = small_cohort
    cohort = Cohort(root)
    order = list(cohort.slides)
    bad = order[0]  # rank 0's first slide (DistributedSampler deals slides round-robin, unshuffled)
    trainer = _trainer() if path == "ddp" else None
    report = summarize_cohort(
        cohort, FailsOn((bad,)), BUDGET, tmp_path / "s", trainer=trainer, stop_on_error=True, progress=False
    )
    assert set(report.failed) == {bad}  # the slides never started are not failures
    if path == "single":
        assert report.done == []
    else:  # rank 0 took no slide after its failure; rank 1 stopped once it saw the flag, or had finished
        assert not set(report.done) & set(order[0::2])
        assert set(report.done) <= set(order[1::2])
    assert not (tmp_path / "s" / ".wsisum_outcomes").exists()
    again = summarize_cohort(cohort, FailsOn(()), BUDGET, tmp_path / "s", trainer=_trainer() if trainer else None)
    assert again.ok and sorted(again.done + again.skipped) == sorted(feats)
