"""Lightning callbacks: checkpoint plumbing, EMA, pruning schedules and evaluation probes."""
