"""The notebook API: the documented example runs, every sampler is reachable, the indices equal the
CLI's for the same slide and seed, a Summarizer loads its checkpoint once, and `import wsisum` is light."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import pytest
import torch

import wsisum
from tests.conftest import REPO, compose_config, make_cohort
from wsisum.api import build_sampler, sampler_names
from wsisum.apps.summarize import summarize as summarize_app
from wsisum.data.bags import read_bag
from wsisum.lit.pretrain import SummarizerPretraining
from wsisum.models.mil import ABMIL
from wsisum.sampling.samplers import KMeansSampler
from wsisum.summarize import scorer

TEACHERS = {"TITAN": 12, "PRISM": 20}
TINY_MODEL = {"embed_dim": 32, "depth": 2, "heads": 2, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}
SEED_3_IN_PROCESS = ("seed=3", "workers=0", "progress=false")
API_DOC = REPO / "docs" / "python_api.md"
README = REPO / "README.md"


def python_block(markdown: str, heading: str | None = None) -> str | None:
    """The first ```python block of `markdown`, or of its section whose heading contains `heading`
    (None when there is no such heading; an assertion when that section has no block)."""
    if heading is not None:
        found = re.search(rf"^#+ [^\n]*{re.escape(heading)}[^\n]*$", markdown, flags=re.MULTILINE)
        if found is None:
            return None
        markdown = markdown[found.end() :]
    block = re.search(r"^```python\n(.*?)^```$", markdown, flags=re.MULTILINE | re.DOTALL)
    assert block is not None, f"no ```python block under {heading!r}"
    before = re.sub(r"^```.*?^```$", "", markdown[: block.start()], flags=re.MULTILINE | re.DOTALL)
    no_heading_between = heading is None or not re.search(r"^#+ ", before, flags=re.MULTILINE)
    assert no_heading_between, f"the section {heading!r} has no ```python block"
    return block.group(1)


def documented_examples() -> dict[str, str]:
    """docs/python_api.md's example, and README's once it has a section headed "Python API"."""
    examples = {"docs/python_api.md": python_block(API_DOC.read_text())}
    readme = python_block(README.read_text(), "Python API")
    if readme is not None:
        examples["README.md"] = readme
    return examples


@pytest.mark.parametrize("doc", sorted(documented_examples()))
def test_documented_example_runs(doc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(documented_examples()[doc], doc, "exec"), {"__name__": "__example__"})
    assert (tmp_path / "summaries" / "slide-1.h5").is_file()


def test_readme_example_is_the_documented_one() -> None:
    examples = documented_examples()
    if "README.md" not in examples:
        pytest.skip("README.md has no section headed 'Python API' yet")
    assert examples["README.md"] == examples["docs/python_api.md"]


def test_readme_section_is_found_between_other_sections() -> None:
    """What `documented_examples` does with README once the section is pasted in."""
    example = python_block(API_DOC.read_text())
    readme = f"# wsisum\n\n```bash\nmake demo\n```\n\n## Python API\n\nText.\n\n```python\n{example}```\n\n## Layout\n"
    assert python_block(readme, "Python API") == example
    assert python_block("## Layout\n\n```python\nx = 1\n```\n", "Python API") is None
    with pytest.raises(AssertionError, match="has no ```python block"):
        python_block("## Python API\n\nText.\n\n## Layout\n\n```python\nx = 1\n```\n", "Python API")


def summarizer_checkpoint(path: Path, feature_dim: int) -> Path:
    """An untrained checkpoint as wsisum-train writes one (what is scored is tested, not how well)."""
    torch.manual_seed(0)
    module = SummarizerPretraining(feature_dim, TEACHERS, model=TINY_MODEL)
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save(ckpt | {"pytorch-lightning_version": L.__version__}, path)
    return path


def abmil_checkpoint(path: Path, in_dim: int) -> Path:
    """An ABMIL checkpoint in MILClassifier's format, for sampler=attention."""
    torch.manual_seed(0)
    model = ABMIL(in_dim, 2)
    meta = {"target": "wsisum.models.mil.ABMIL", "init_args": dict(model.init_args), "class_names": ["a", "b"]}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "mil_model": meta}, path)
    return path


def slide(n: int = 400, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)).astype(np.float32), rng.integers(0, 60, size=(n, 2)) * 256


def test_every_registered_sampler_is_reachable(tmp_path: Path) -> None:
    features, coords = slide()
    options = {
        "attention": {"ckpt_path": abmil_checkpoint(tmp_path / "abmil.ckpt", 16)},
        "wsisum_search": {
            "ckpt_path": summarizer_checkpoint(tmp_path / "last.ckpt", 16),
            "target": "self",
            "teacher_weight": 1.0,
        },
    }
    assert {"random", "kmeans", "location", "attention", "wsisum", "mosaic", "facility"} <= set(sampler_names())
    for name in sampler_names():
        sel = wsisum.summarize_slide(
            torch.from_numpy(features), torch.from_numpy(coords), 16, name, **options.get(name, {})
        )
        assert len(sel.indices) == 16 and (np.diff(sel.indices) > 0).all() and sel.indices[-1] < 400, name
    for name in ("mosaic", "sdm", "splice"):
        n_kept = len(wsisum.summarize_slide(features, coords, "auto", name).indices)
        assert 1 <= n_kept < 400, name


def test_options_merge_over_the_config_and_seed_per_slide() -> None:
    features, _ = slide()
    expected = KMeansSampler(3, n_clusters=5, within="nearest").select(features, 16, slide_id="s1").indices
    got = wsisum.summarize_slide(features, budget=16, n_clusters=5, within="nearest", slide_id="s1", seed=3).indices
    np.testing.assert_array_equal(got, expected)
    other_slide = wsisum.summarize_slide(features, budget=16, sampler="random", slide_id="s2").indices
    assert not np.array_equal(
        wsisum.summarize_slide(features, budget=16, sampler="random", slide_id="s1").indices, other_slide
    )


def test_bad_calls_are_one_line_each() -> None:
    features, coords = slide()
    cases = [
        ({"sampler": "nope"}, "unknown sampler 'nope'; valid samplers: attention, entropy"),
        ({"n_clusterz": 5}, "sampler=kmeans has no option n_clusterz; valid options: seed, n_clusters,"),
        ({"sampler": "location", "coords": None}, "sampler=location needs coords=(N, 2) patch positions"),
        (
            {"sampler": "wsisum_search", "teacher_weight": 1.0},
            "sampler=wsisum needs ckpt_path=<a wsisum-train checkpoint>",
        ),
        ({"sampler": "attention"}, "sampler=attention needs a trained attention-MIL model"),
        ({"budget": "auto"}, "budget=auto needs a sampler that sets its own size"),
        ({"features": features[:, :, None]}, "features must be a non-empty 2-D array"),
        ({"coords": coords[:10]}, "coords must have shape (400, 2)"),
    ]
    for kwargs, message in cases:
        call = {"features": features, "coords": coords, "budget": 16} | kwargs
        with pytest.raises(wsisum.InputError) as err:
            wsisum.summarize_slide(**call)
        assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_default_wsisum_needs_no_checkpoint() -> None:
    features, coords = slide()
    assert len(wsisum.summarize_slide(features, coords, 16, "wsisum").indices) == 16
    assert not build_sampler("wsisum").loads_model({}) and build_sampler("wsisum_search").loads_model(
        {"faithful": True}
    )
    assert not build_sampler("wsisum_search").needs_model  # patch level only: no checkpoint, no forward


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("api") / "cohort"
    make_cohort(root, {"dsA": [300, 150, 90]}, dim=16, teachers=TEACHERS)
    return root


def test_same_indices_as_the_cli(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    sweep = [
        "-m",
        "sampler=kmeans,location,mosaic",
        f"out_dir={out}/${{sampler_name}}",
        f"hydra.sweep.dir={tmp_path}/s",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "wsisum.apps.summarize", *sweep, f"data.root={cohort}", "budget=16", *SEED_3_IN_PROCESS],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    for bag_path in sorted((cohort / "h5_files" / "dsA").glob("*.h5")):
        bag = read_bag(bag_path)
        for name in ("kmeans", "location", "mosaic"):
            cli = read_bag(out / name / "dsA" / bag_path.name)
            sel = wsisum.summarize_slide(bag.features, bag.coords, 16, name, slide_id=bag.slide_id, seed=3)
            np.testing.assert_array_equal(sel.indices, cli.extras["indices"], err_msg=f"{name} {bag.slide_id}")
        mine = wsisum.write_summary(tmp_path / "api" / bag_path.name, bag, sel, sampler="mosaic", budget=16, seed=3)
        assert_same_summary(mine, out / "mosaic" / "dsA" / bag_path.name)


def assert_same_summary(mine: Path, cli: Path) -> None:
    with h5py.File(mine, "r") as a, h5py.File(cli, "r") as b:
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key][()], b[key][()], err_msg=key)
        for key in ("sampler", "budget", "seed", "n_kept", "n_source", "wsisum_version"):
            assert a.attrs[key] == b.attrs[key], key


def test_wsisum_equals_the_cli_with_slide_rarity(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    overrides = [f"data.root={cohort}", "sampler=wsisum", "sampler.rarity=slide", "sampler.n_clusters=6"]
    cfg = compose_config(
        "summarize", [*overrides, "budget=8", "workers=0", "progress=false", f"out_dir={out}"], tmp_path
    )
    assert summarize_app(cfg).ok
    for bag_path in sorted((cohort / "h5_files" / "dsA").glob("*.h5")):
        bag = read_bag(bag_path)
        sel = wsisum.summarize_slide(bag.features, bag.coords, 8, "wsisum", slide_id=bag.slide_id, n_clusters=6)
        np.testing.assert_array_equal(sel.indices, read_bag(out / "dsA" / bag_path.name).extras["indices"])


def test_summarizer_loads_once_and_scores_with_teachers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads = []
    restore = scorer.restore_module
    monkeypatch.setattr(scorer, "restore_module", lambda *a, **k: loads.append(a) or restore(*a, **k))
    summarizer = wsisum.Summarizer.from_checkpoint(summarizer_checkpoint(tmp_path / "last.ckpt", 16))
    assert summarizer.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert sorted(summarizer.teacher_names) == sorted(TEACHERS)
    rng = np.random.default_rng(1)
    teachers = {t: rng.normal(size=d) for t, d in TEACHERS.items()}
    scores = []
    for seed in range(2):
        features, coords = slide(seed=seed)
        sel = summarizer.select(features, coords, budget=16, teachers=teachers, slide_id=f"s{seed}")
        assert len(sel.indices) == 16
        scores.append(sel.score)
    other = {t: torch.from_numpy(-e[None]) for t, e in teachers.items()}  # (1, D) tensors are taken too
    other_score = summarizer.select(features, coords, 16, other, slide_id="s1").score
    assert other_score != pytest.approx(scores[1], abs=1e-6)  # the teachers are what it scores against
    teacher_free = summarizer.select(features, coords, 16, slide_id="s1")
    assert len(teacher_free.indices) == 16 and summarizer.sampler("self").needs_model
    patch_level = wsisum.summarize_slide(features, coords, 16, "wsisum_search", slide_id="s1").score
    assert teacher_free.score != pytest.approx(patch_level)
    assert len(loads) == 1  # three slides and two targets, one model load


def test_summarizer_bad_input_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(wsisum.InputError, match="checkpoint not found"):
        wsisum.Summarizer.from_checkpoint(tmp_path / "none.ckpt", device="cpu")
    summarizer = wsisum.Summarizer.from_checkpoint(summarizer_checkpoint(tmp_path / "c.ckpt", 16), device="cpu")
    features, coords = slide()
    with pytest.raises(wsisum.InputError, match=r"unknown teacher\(s\) CHIEF; the checkpoint has"):
        summarizer.select(features, coords, 16, {"CHIEF": np.ones(12)})
    with pytest.raises(wsisum.InputError, match="feature dim 8 differs from the checkpoint's 16"):
        summarizer.select(features[:, :8], coords, 16)


def test_write_summary_refuses_another_slides_selection(tmp_path: Path) -> None:
    features, coords = slide()
    sel = wsisum.summarize_slide(features, coords, 16)
    with pytest.raises(wsisum.InputError, match="do not fit a bag of 10 patches"):
        wsisum.write_summary(tmp_path / "s.h5", features[:10], sel, coords[:10], sampler="kmeans", budget=16)
    assert not (tmp_path / "s.h5").exists()


def test_import_wsisum_stays_light() -> None:
    code = (
        "import sys, wsisum\n"
        "heavy = {'torch', 'lightning', 'hydra'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
        "names = [wsisum.read_bag, wsisum.write_summary, wsisum.Selection, wsisum.Summarizer, wsisum.summarize_slide]\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
        "import types, wsisum.summarize.run as stage\n"
        "assert type(wsisum.summarize) is types.ModuleType and stage.summarize_cohort  # one thing: the subpackage\n"
        "assert sorted(wsisum.__all__) == wsisum.__all__\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
