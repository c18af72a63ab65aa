"""Many small runs in one process: a sweep's jobs that differ only in values that change
no shape (learning rate, penalty weight, noise level, seed) trained as one stacked model,
each member writing exactly what its lone run writes (``hydra/launcher=stacked``).

- :mod:`aeexp.stacked.weights`: the members' weights as (N, ...) tensors and the vmapped forward;
- :mod:`aeexp.stacked.members`: one member, set up as a lone run is;
- :mod:`aeexp.stacked.training`: the lock-step epochs;
- :mod:`aeexp.stacked.grouping`: which jobs stack, and why the others do not;
- :mod:`aeexp.stacked.launcher`: the Hydra launcher.
"""
