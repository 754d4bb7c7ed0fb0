"""Experiments' configuration, assignment and team-draft interleaving (models/experiments)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from models.experiments.assignment import assign, bucket, merged_changes
from models.experiments.config import ConfigError, ExperimentsConfig, load_config, parse_config
from models.experiments.interleave import team_draft

USERS = [f"u{i}" for i in range(20_000)]


def _config(**extra: object) -> ExperimentsConfig:
    doc = {"version": 1, "experiments": [
        {"name": "ranker", "layer": "ranking", "variants": [
            {"name": "control"}, {"name": "no_ranker", "weight": 3, "changes": {"ranker": False}}]},
        {"name": "diversity", "layer": "post", "variants": [
            {"name": "control"}, {"name": "diverse", "changes": {"diversity": 0.3}}]},
    ], **extra}
    return parse_config(doc)


def test_assignment_is_deterministic_sticky_and_follows_the_weights() -> None:
    config = _config()
    first = [assign(config, u, 0) for u in USERS]
    again = [assign(config, u, 0) for u in USERS]
    assert first == again  # no state: the same user, the same variants
    variants = [next(a.variant for a in got if a.experiment == "ranker") for got in first]
    share = variants.count("no_ranker") / len(variants)
    assert abs(share - 0.75) < 0.015, share  # weights 1:3
    test = stats.binomtest(variants.count("no_ranker"), len(variants), 0.75)
    assert test.pvalue > 1e-4


def test_layers_are_orthogonal_and_a_layer_is_mutually_exclusive() -> None:
    config = _config()
    pairs = [{a.experiment: a.variant for a in assign(config, u, 0)} for u in USERS]
    table = np.zeros((2, 2))
    for p in pairs:
        table[int(p["ranker"] == "no_ranker"), int(p["diversity"] == "diverse")] += 1
    # Independent layers: the two splits are unrelated (chi-square test of independence).
    assert stats.chi2_contingency(table).pvalue > 1e-3, table
    one_layer = parse_config({"version": 1, "experiments": [
        {"name": "a", "layer": "L", "traffic": 0.3, "variants": [{"name": "x"}, {"name": "y"}]},
        {"name": "b", "layer": "L", "traffic": 0.5, "variants": [{"name": "x"}, {"name": "y"}]}]})
    names = [[a.experiment for a in assign(one_layer, u, 0)] for u in USERS]
    assert all(len(n) <= 1 for n in names)  # at most one experiment of the layer
    shares = [sum(n == [e] for n in names) / len(USERS) for e in ("a", "b")]
    assert abs(shares[0] - 0.3) < 0.015 and abs(shares[1] - 0.5) < 0.015, shares
    assert abs(sum(not n for n in names) / len(USERS) - 0.2) < 0.015


def test_holdout_users_get_no_experiment_and_are_tagged() -> None:
    config = _config(holdout={"share": 0.1, "salt": "h1"})
    got = [assign(config, u, 0) for u in USERS]
    held = [g for g in got if g[0].variant == "holdout"]
    assert all(len(g) == 1 and g[0].experiment == "holdout" for g in held)
    assert abs(len(held) / len(USERS) - 0.1) < 0.01
    assert all(g[0].variant == "exposed" and len(g) == 3 for g in got if g[0].variant != "holdout")


def test_start_and_stop_bound_an_experiment(tmp_path: Path) -> None:
    start = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    config = parse_config({"version": 1, "experiments": [{"name": "e", "start": start, "stop": 1_800_000_000_000,
                                                           "variants": [{"name": "a"}]}]})
    assert assign(config, "u1", start - 1) == []
    assert [a.experiment for a in assign(config, "u1", start)] == ["e"]
    assert assign(config, "u1", 1_800_000_000_000) == []
    # A TOML file may write its own datetimes (one without a zone is UTC); the document holds epoch ms.
    path = tmp_path / "e.toml"
    path.write_text('version = 1\n[[experiments]]\nname = "e"\nstart = 2026-01-01T00:00:00Z\n'
                    'stop = 2027-01-01T00:00:00\n[[experiments.variants]]\nname = "a"\n')
    loaded = load_config(path)
    assert (loaded.experiments[0].start, loaded.experiments[0].stop) == (start, 1_798_761_600_000)


def test_the_budgetable_sources_are_the_candidate_sources() -> None:
    from typing import get_args

    from models.candidates import CandidateConfig
    from models.experiments.config import Source

    assert set(get_args(Source)) == set(CandidateConfig().budgets())


def test_changes_merge_across_layers() -> None:
    config = _config()
    for u in USERS[:200]:
        got = assign(config, u, 0)
        merged = merged_changes(got)
        variants = {a.experiment: a.variant for a in got}
        assert (merged.ranker is False) == (variants["ranker"] == "no_ranker")
        assert (merged.diversity == 0.3) == (variants["diversity"] == "diverse")


@pytest.mark.parametrize(("doc", "field", "rule"), [
    ({"experiments": [{"name": "a", "variants": []}]}, "experiments[0].variants", False),
    ({"experiments": [{"name": "a", "traffic": 1.5, "variants": [{"name": "x"}]}]}, "experiments[0].traffic", False),
    ({"experiments": [{"name": "a", "variants": [{"name": "x", "changes": {"rankr": False}}]}]},
     "experiments[0].variants[0].changes", False),
    ({"experiments": [{"name": "a", "variants": [{"name": "x", "changes": {"candidates": {"annn": 3}}}]}]},
     "experiments[0].variants[0].changes.candidates", False),
    ({"experiments": [{"name": "a", "start": "yesterday", "variants": [{"name": "x"}]}]}, "experiments[0].start",
     False),
    ({"experiments": [{"name": "a", "kind": "interleave", "variants": [{"name": "x"}]}]}, "experiments[0].variants",
     True),
    ({"experiments": [{"name": "a", "variants": [{"name": "x"}]}, {"name": "a", "variants": [{"name": "x"}]}]},
     "experiments[1].name", True),
    ({"experiments": [{"name": "a", "layer": "L", "traffic": 0.6, "variants": [{"name": "x"}]},
                      {"name": "b", "layer": "L", "traffic": 0.6, "variants": [{"name": "x"}]}]},
     "experiments[1].traffic", True),
    ({"experiments": [{"name": "a", "start": 2000, "stop": 1000, "variants": [{"name": "x"}]}]},
     "experiments[0].stop", True),
])
def test_an_invalid_document_names_the_field(doc: dict[str, object], field: str, rule: bool) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    assert err.value.field.startswith(field), err.value  # a dict key's error may name the key too
    assert err.value.rule is rule, "a broken rule across fields is the API's 422, a malformed document its 400"


def test_the_shipped_experiments_file_is_valid() -> None:
    path = Path(__file__).resolve().parents[2] / "deploy" / "experiments.toml"
    config = load_config(path)
    assert config.experiments, "the demo ships at least one experiment"


def test_buckets_are_uniform() -> None:
    counts = np.bincount([bucket("s", u) // 1000 for u in USERS], minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_team_draft_takes_each_teams_best_remaining_title_in_turn() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        a = rng.permutation(30)[:15].astype(np.int64)
        b = rng.permutation(30)[:15].astype(np.int64)
        rows, teams = team_draft(a, b, 10, f"r{trial}")
        assert len(rows) == 10 and len(set(rows.tolist())) == 10
        counts = np.bincount(teams, minlength=2)
        assert abs(int(counts[0]) - int(counts[1])) <= 1  # teams alternate, a coin breaks ties
        for team, ranking in ((0, a), (1, b)):
            for pos in np.flatnonzero(teams == team):
                # The pick is the team's best title not on the list before it.
                before = set(rows[:pos].tolist())
                best = next(r for r in ranking.tolist() if r not in before)
                assert rows[pos] == best
        assert np.array_equal(team_draft(a, b, 10, f"r{trial}")[0], rows)  # deterministic per request


def test_team_draft_of_identical_rankings_is_the_ranking_and_coins_are_fair() -> None:
    a = np.arange(10, dtype=np.int64)
    firsts = []
    for trial in range(400):
        rows, teams = team_draft(a, a.copy(), 10, f"q{trial}")
        assert np.array_equal(rows, a)
        firsts.append(int(teams[0]))
    assert stats.binomtest(sum(firsts), len(firsts), 0.5).pvalue > 1e-3
    rows, teams = team_draft(np.arange(3, dtype=np.int64), np.arange(3, 8, dtype=np.int64), 10, "short")
    assert sorted(rows.tolist()) == list(range(8))  # a team with nothing left passes its turn
