"""Stage 1: bags, cohorts, labels, splits, synthetic cohorts and the DataModules that stream them."""
