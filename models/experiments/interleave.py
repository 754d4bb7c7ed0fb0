"""Team-draft interleaving (Radlinski, Kurup, Joachims 2008): two rankings drafted into one list.

Each round, the team with fewer picks (a coin decides a tie) adds its best title not yet on the list. Engagement on
a title then credits the team that contributed it (streams/experiments.py counts the credits; the report tests the
preference). Netflix reports it as far more sensitive than an A/B test for ranking changes: both rankings are judged
by the same user at the same moment, so the between-user variance drops out.
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import NDArray


def _coins(seed: str, n: int) -> NDArray[np.bool_]:
    # Deterministic per request: a replay of the same request drafts the same list.
    digest = int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=8).digest(), "big")
    return np.random.default_rng(digest).random(n) < 0.5


def team_draft(a: NDArray[np.int64], b: NDArray[np.int64], k: int, seed: str
               ) -> tuple[NDArray[np.int64], NDArray[np.int8]]:
    """The drafted list of at most ``k`` titles and, per position, the team (0: ``a``, 1: ``b``).

    The loop runs over the ``k`` picks (each pick skips what the other team already took), never over candidates.
    """
    rankings = (a.tolist(), b.tolist())
    pointer = [0, 0]
    taken: set[int] = set()
    picks: list[int] = []
    teams: list[int] = []
    count = [0, 0]
    coins = _coins(seed, k)
    while len(picks) < k:
        first = 0 if count[0] < count[1] or (count[0] == count[1] and coins[len(picks)]) else 1
        for team in (first, 1 - first):  # a team with nothing left passes its turn
            ranking, p = rankings[team], pointer[team]
            while p < len(ranking) and ranking[p] in taken:
                p += 1
            pointer[team] = p
            if p < len(ranking):
                picks.append(ranking[p])
                taken.add(ranking[p])
                teams.append(team)
                count[team] += 1
                break
        else:
            break  # both rankings exhausted
    return np.asarray(picks, np.int64), np.asarray(teams, np.int8)
