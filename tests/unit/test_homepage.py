"""The homepage's rows (models.recommend.homepage): what each row holds, the rules every row keeps, the order of
rows per user, a title at most once on the page, continue-watching from playback events, and the HTTP parameters."""

from __future__ import annotations

import numpy as np
import pytest
from test_recommend_pipeline import NOW, tiny_model

from models.postprocess import PostConfig
from models.recommend.homepage import HomepageRequest, build_rows, row_payload
from models.recommend.pipeline import RankedIds, RecommendRequest, Snapshot, retrieve
from schemas.events import Complete, Play, Progress, Skip
from serving.http_validation import ParamError, parse_homepage_request
from streams.session import continue_watching

POST = PostConfig(popularity_correction=0.0, exposure_prices=False)


def _page(user: str = "u0", snap: Snapshot | None = None, scores_of: dict[int, float] | None = None,
          cw: list[tuple[str, int, int]] | None = None, **request: object) -> tuple[list, object, object]:
    model = tiny_model()
    snap = snap or Snapshot()
    req = RecommendRequest(user, k=4, **request)  # type: ignore[arg-type]
    retrieved = retrieve(model, req, snap, NOW)
    rows = retrieved.candidates.items
    # The ranker's logits: by default the lower the row, the better (so the order is checkable).
    scores = np.array([(scores_of or {}).get(int(r), -float(r)) for r in rows], np.float32)
    page = build_rows(model, HomepageRequest(req, rows=12, per_row=4), retrieved, snap, scores, NOW, POST, cw or [])
    return page, model, retrieved


def test_rows_keep_the_rules_and_show_a_title_at_most_once() -> None:
    snap = Snapshot(trending={"all": RankedIds([(f"i{k}", 30.0 - k) for k in range(30)])})
    page, model, retrieved = _page(snap=snap, maturity_limit="R")
    ids = [row.id for row in page]
    assert ids[0] == "top_picks", ids
    assert any(i.startswith("because_you_watched:") for i in ids) and "trending" in ids
    shown = np.concatenate([row.items for row in page])
    assert len(shown) == len(set(shown.tolist())), "a title appears once on the page"
    watched = {0, 1, 2}
    assert not watched & set(shown.tolist()), "watched titles are in no row"
    assert 29 not in shown, "unavailable"
    assert not set(range(20, 29)) & set(shown.tolist()), "above the profile's maturity limit"
    assert all(len(row.items) <= 4 for row in page)
    top = next(row for row in page if row.id == "top_picks")
    assert top.items.tolist() == sorted(top.items.tolist()), "top picks in the ranker's order (best: lowest row)"
    byw = next(row for row in page if row.reason == "because_you_watched")
    seed = model.items.index[byw.extra["seed_item_id"]]
    assert seed in watched and byw.title == f"Because you watched Title {seed}"
    body = row_payload(model, retrieved, top)
    first = body["items"][0]
    assert first["title"].startswith("Title ") and first["genres"] and first["sources"]


def test_rows_are_ordered_by_the_engagement_the_ranker_expects() -> None:
    snap = Snapshot(trending={"all": RankedIds([(f"i{k}", 30.0 - k) for k in range(30)])})
    base, model, retrieved = _page(snap=snap)
    genre_rows = [row for row in base if row.reason == "genre"]
    assert genre_rows, "a user with history gets the genres they watch"
    # Make the ranker love one genre: that row's titles are worth more than any other row's beyond top picks.
    genre = genre_rows[-1].extra["genre"]
    g = model.items.genre_vocab.index(genre)
    loved = {int(r): 50.0 for r in retrieved.candidates.items if model.items.genre_matrix[r, g] > 0}
    page, _, _ = _page(snap=snap, scores_of=loved)
    ids, base_ids = [row.id for row in page], [row.id for row in base]
    # Top picks takes the best loved titles; the genre's own row holds the next ones and comes right after it.
    assert ids[0] == "top_picks" and all(model.items.genre_matrix[r, g] > 0 for r in page[0].items)
    assert ids.index(f"genre:{genre}") == 1 < base_ids.index(f"genre:{genre}"), (ids, base_ids)
    assert page[1].worth > max(row.worth for row in page[2:])


def test_a_new_user_gets_rows() -> None:
    snap = Snapshot(trending={"all": RankedIds([(f"i{k}", 30.0 - k) for k in range(30)]),
                              "country": RankedIds([(f"i{k}", 20.0 - k) for k in range(12, 19)])})
    page, _, _ = _page(user="stranger", snap=snap, country="US")
    ids = [row.id for row in page]
    assert "top_picks" in ids and "trending_country" in ids
    assert not any(i.startswith(("because_you_watched", "continue")) for i in ids), ids
    assert any(i.startswith("genre:") for i in ids), "the catalogue's most watched genres stand in for the user's"
    country = next(row for row in page if row.id == "trending_country")
    assert country.title == "Trending in US"


def test_continue_watching_is_pinned_first_and_keeps_watched_titles_but_not_unavailable_ones() -> None:
    cw = [("i1", NOW - 5, 420), ("i29", NOW - 6, 100), ("gone", NOW - 7, 10)]
    page, model, retrieved = _page(cw=cw)
    assert page[0].id == "continue_watching"
    assert page[0].items.tolist() == [1], "watched i1 stays; unavailable i29 and unknown titles do not"
    body = row_payload(model, retrieved, page[0])
    assert body["items"][0]["progress"] == pytest.approx(0.42)
    seeds = {row.extra["seed_item_id"] for row in page if row.reason == "because_you_watched"}
    assert seeds and "i1" not in seeds, "a title still being watched seeds no 'because you watched' row"


def _event(cls: type, item: str, ts: int, **extra: object) -> object:
    return cls(event_id=f"e{ts}", ts=ts, schema_version=1, user_id="u", item_id=item, **extra)


def test_continue_watching_follows_playback_events() -> None:
    cw: list[tuple[str, int, int]] = []
    cw = continue_watching(cw, _event(Play, "a", 1))
    cw = continue_watching(cw, _event(Play, "b", 2))
    assert [i for i, _, _ in cw] == ["b", "a"]
    cw = continue_watching(cw, _event(Progress, "a", 3, watched_seconds=600, duration_seconds=1200))
    assert cw[0] == ("a", 3, 500), "progress moves it first, with how far in"
    cw = continue_watching(cw, _event(Play, "a", 4))
    assert cw[0] == ("a", 4, 500), "a new play keeps the progress"
    cw = continue_watching(cw, _event(Progress, "b", 5, watched_seconds=1150, duration_seconds=1200))
    assert [i for i, _, _ in cw] == ["a"], "95% in counts as finished"
    cw = continue_watching(cw, _event(Play, "c", 6))
    cw = continue_watching(cw, _event(Complete, "a", 7, watched_seconds=1200))
    cw = continue_watching(cw, _event(Skip, "c", 8))
    assert cw == []
    for k in range(15):
        cw = continue_watching(cw, _event(Play, f"t{k}", 10 + k))
    assert len(cw) == 10 and cw[0][0] == "t14"


def test_homepage_parameters() -> None:
    hreq = parse_homepage_request("u1", "r", {"rows": "3", "per_row": "7", "country": "us"})
    assert (hreq.rows, hreq.per_row, hreq.base.k, hreq.base.country) == (3, 7, 7, "US")
    for query, field in (({"rows": "0"}, "rows"), ({"per_row": "51"}, "per_row"), ({"k": "5"}, "k"),
                         ({"device": "fridge"}, "device")):
        with pytest.raises(ParamError) as err:
            parse_homepage_request("u1", "r", query)
        assert err.value.field == field
