"""``streamrec simulate``: simulated users of a generated world, driven through the real HTTP API.

* :mod:`~tools.simulate.truth`: the users' ground truth, rebuilt from ``world.json`` (the generator's own
  catalogue, users and drifting tastes, as they stand at the log's end);
* :mod:`~tools.simulate.behaviour`: what a user does with a list (position bias, affinity-driven clicks, plays,
  completes and skips), vectorised over the list, and the events that say so;
* :mod:`~tools.simulate.api`: the HTTP calls (the project's client) with per-try status and latency counts;
* :mod:`~tools.simulate.stats`: the run's tallies and its summary;
* :mod:`~tools.simulate.driver`: the asyncio loop of N users over M minutes with bounded concurrency.
"""
