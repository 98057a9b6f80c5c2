"""Sweeps: the runner's sweeper's work (`sweep`: jobs checked first, a parent run, every job a
run, the report), a batched sweep's points (`points`), a search (`search`), and the launchers
it makes failure-resistant: submitit, SLURM's included (`cluster`), joblib and Ray (`workers`)."""
