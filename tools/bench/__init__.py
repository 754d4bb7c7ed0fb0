"""``streamrec bench all``: the runner of every benchmark of ``benchmarks/``, and the plots of a run."""
