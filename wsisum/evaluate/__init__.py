"""Stage 7: downstream evaluation of bags (full or summarized) with MIL models, and sweep aggregation.

- `tasks`: what a task is (labels, splits, classes, what to select by) and how a YAML becomes one.
- `runner`: the fold loop behind `wsisum-evaluate` (train on train, select on val, test on test).
- `results`: the tidy `metrics.csv` (task, sampler, budget, mil, fold, metric, value).
- `aggregate`: mean ± std over (fold, seed) replicates across runs, Markdown table, AUROC-vs-budget plot.
- `paired`: samplers compared on the same (fold, seed) replicates: differences, bootstrap CIs, verdicts, retention.
- `hydra_callbacks`: writes the aggregate when a `-m` multirun ends.
"""
