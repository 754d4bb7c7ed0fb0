"""The MovieLens importer: tiny hand-written fixtures for each published layout, plus the real
ml-latest-small when it is checked out next to the repository."""

from __future__ import annotations

import calendar
import json
import random
from pathlib import Path

import pytest

from foundation.settings import Settings
from schemas.decoder import decode_event
from schemas.events import Event, ItemUpsert, Rating, UserUpsert, encode
from tools.datasets import movielens
from tools.datasets.movielens import MovieLensError, detect_layout, import_movielens


def _year(year: int) -> int:
    return calendar.timegm((year, 1, 1, 0, 0, 0)) * 1000


def _write(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def _encoded(events: list[Event]) -> list[bytes]:
    return [encode(event) for event in events]


def _item(item_id: str, title: str, genres: list[str], release_ts: int, year: int | None, ts: int,
          tags: list[str] | None = None) -> ItemUpsert:
    return ItemUpsert(event_id=f"ml-i-{item_id}", ts=ts, schema_version=1, item_id=item_id, title=title,
                      genres=genres, tags=tags or [], release_ts=release_ts, year=year)


def _rating(user: int, item: int, value: float, seconds: int) -> Rating:
    ts = seconds * 1000
    return Rating(event_id=f"ml-r-{user}-{item}-{ts}", ts=ts, schema_version=1, user_id=str(user),
                  item_id=str(item), value=value)


def _user(user: int, ts: int, age: int, gender: str, occupation: str, zip_code: str) -> UserUpsert:
    return UserUpsert(event_id=f"ml-u-{user}", ts=ts, schema_version=1, user_id=str(user), age=age,
                      gender=gender, occupation=occupation, zip_code=zip_code)


def _assert_valid_log(out: Path) -> list[Event]:
    """Every line decodes with the schema decoder, is canonical, and events.jsonl is time-ordered."""
    events: list[Event] = []
    for name in ("catalog.jsonl", "events.jsonl"):
        for raw in _lines(out / name):
            event = decode_event(raw)
            assert encode(event) == raw
            events.append(event)
    stamps = [decode_event(raw).ts for raw in _lines(out / "events.jsonl")]
    assert stamps == sorted(stamps)
    # The whole catalog shares one ts, strictly before the first event: replay never meets an
    # unknown title (profiles without ratings share the catalog ts).
    catalog_ts = {decode_event(raw).ts for raw in _lines(out / "catalog.jsonl")}
    assert len(catalog_ts) <= 1
    ratings_ts = [e.ts for e in events if isinstance(e, Rating)]
    if catalog_ts and ratings_ts:
        assert max(catalog_ts) < min(ratings_ts)
    return events


# ---------------------------------------------------------------------------------------------
# Fixtures: a few rows per layout, with the quirks the real files have
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def ml_latest(tmp_path: Path) -> Path:
    root = tmp_path / "ml-latest-tiny"
    _write(root / "movies.csv", (
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Babylon 5,(no genres listed)\n"
        '4,"Misérables, Les (1995)",Drama|War\n'
        "5,Casablanca (1942),Drama|Romance\n"
        "6,Death Note: Desu nôto (2006–2007) ,(no genres listed)\n"
    ))
    _write(root / "ratings.csv", (
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,964982703\n"
        "1,2,3.5,964982703\n"
        "2,1,5.0,964982000\n"
        "2,4,0.5,964982703\n"
        "10,3,2.5,964982703\n"
        "3,99,4.0,964990000\n"
    ))
    _write(root / "tags.csv", (
        "userId,movieId,tag,timestamp\n"
        "1,1,pixar,1139045764\n"
        "2,1,Pixar,1139045700\n"
        "1,1,fun,1139045800\n"
        "1,1,  FUN ,1139045900\n"
        '2,4,"revolution, france",1139045000\n'
        "1,99,orphan,1\n"
    ))
    _write(root / "links.csv", "movieId,imdbId,tmdbId\n1,0114709,862\n")
    return root


@pytest.fixture
def ml_100k(tmp_path: Path) -> Path:
    root = tmp_path / "ml-100k"
    genres = movielens._ML100K_GENRES
    _write(root / "u.genre", "".join(f"{g}|{i}\n" for i, g in enumerate(genres)) + "\n\n")

    def flags(*names: str) -> str:
        return "|".join("1" if g in names else "0" for g in genres)

    kids = "Children's"
    _write(root / "u.item", (
        f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|"
        f"{flags('Animation', kids, 'Comedy')}\n"
        f"2|Á köldum klaka (Cold Fever) (1994)|01-Jan-1994||http://us.imdb.com/x|"
        f"{flags('Comedy', 'Drama')}\n"
        f"267|unknown||||{flags('unknown')}\n"
        f"4|Some Film|15-Mar-1996||http://us.imdb.com/y|{flags('Action')}\n"
        f"5|Old Film|01-Jan-1932||http://us.imdb.com/z|{flags('Drama')}\n"
    ), encoding="latin-1")
    _write(root / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n")
    _write(root / "u.data", (
        "1\t1\t5\t874965758\n"
        "2\t2\t3\t874965758\n"
        "1\t267\t4\t874965700\n"
        "5\t4\t2\t875000000\n"
        "2\t1\t1\t874965000\n"
    ))
    _write(root / "u.occupation", "administrator\nartist\n")
    return root


@pytest.fixture
def ml_1m(tmp_path: Path) -> Path:
    root = tmp_path / "ml-1m"
    _write(root / "movies.dat", (
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::Misérables, Les (1995)::Drama|Musical\n"
        "3::City of Lost Children, The (1995)::Adventure|Sci-Fi\n"
    ), encoding="latin-1")
    _write(root / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::99::55117\n")
    _write(root / "ratings.dat", (
        "1::1::5::978300760\n"
        "2::2::3::978300760\n"
        "3::3::4::978300000\n"
        "1::7::1::978301000\n"
    ))
    return root


# ---------------------------------------------------------------------------------------------
# Exact output per layout
# ---------------------------------------------------------------------------------------------


def test_ml_latest_exact_output(ml_latest: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = import_movielens(ml_latest, out)

    cat = 964982000_000 - 1000  # one second before the earliest rating
    assert _lines(out / "catalog.jsonl") == _encoded([
        _item("1", "Toy Story (1995)", ["Adventure", "Animation", "Children", "Comedy", "Fantasy"],
              _year(1995), 1995, cat, tags=["Pixar", "fun"]),  # first use by time wins the spelling
        _item("2", "American President, The (1995)", ["Comedy", "Drama", "Romance"], _year(1995), 1995, cat),
        _item("3", "Babylon 5", [], cat, None, cat),
        _item("4", "Misérables, Les (1995)", ["Drama", "War"], _year(1995), 1995, cat,
              tags=["revolution, france"]),
        _item("5", "Casablanca (1942)", ["Drama", "Romance"], -883_612_800_000, 1942, cat),  # before 1970
        _item("6", "Death Note: Desu nôto (2006–2007)", [], _year(2006), 2006, cat),
    ])
    assert _lines(out / "events.jsonl") == _encoded([
        _rating(2, 1, 5.0, 964982000),
        _rating(1, 1, 4.0, 964982703),  # equal ts: user id, numerically (2 < 10), then item id
        _rating(1, 2, 3.5, 964982703),
        _rating(2, 4, 0.5, 964982703),
        _rating(10, 3, 2.5, 964982703),
        _rating(3, 99, 4.0, 964990000),  # unknown movie: still emitted, counted
    ])
    _assert_valid_log(out)

    assert summary.layout == "ml-latest"
    assert (summary.items, summary.ratings, summary.users, summary.user_upserts) == (6, 6, 4, 0)
    assert (summary.unknown_movie_ratings, summary.tag_applications, summary.item_tags) == (1, 6, 3)
    assert summary.unknown_movie_tags == 1
    assert summary.movies_without_year == 1 and summary.pre_epoch_releases == 1
    assert summary.movies_without_ratings == 2  # 5 and 6
    report = json.loads((out / "import.json").read_text())
    assert report["layout"] == "ml-latest"
    assert report["counts"]["ratings"] == 6 and report["counts"]["unknown_movie_ratings"] == 1
    assert report["time_range"] == {
        "catalog_ts": cat, "first_ts": 964982000_000, "last_ts": 964990000_000,
        "first": "2000-07-30T18:33:20+00:00", "last": "2000-07-30T20:46:40+00:00",
    }
    assert sorted(p.name for p in out.iterdir()) == ["catalog.jsonl", "events.jsonl", "import.json"]


def test_ml_100k_exact_output(ml_100k: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = import_movielens(ml_100k, out)

    cat = 874965000_000 - 1000
    assert _lines(out / "catalog.jsonl") == _encoded([
        # ml-100k has exact release dates; the year still comes from the title when it has one.
        _item("1", "Toy Story (1995)", ["Animation", "Children's", "Comedy"], _year(1995), 1995, cat),
        _item("2", "Á köldum klaka (Cold Fever) (1994)", ["Comedy", "Drama"], _year(1994), 1994, cat),
        _item("267", "unknown", [], cat, None, cat),
        _item("4", "Some Film", ["Action"], calendar.timegm((1996, 3, 15, 0, 0, 0)) * 1000, 1996, cat),
        _item("5", "Old Film", ["Drama"], -1_199_232_000_000, 1932, cat),  # year from the 1932 date
    ])
    assert _lines(out / "events.jsonl") == _encoded([
        _user(3, cat, 23, "M", "writer", "32067"),  # a profile without ratings: first, at the catalog ts
        _user(2, 874965000_000, 53, "F", "other", "94043"),  # at the first rating, just before it
        _rating(2, 1, 1.0, 874965000),
        _user(1, 874965700_000, 24, "M", "technician", "85711"),
        _rating(1, 267, 4.0, 874965700),
        _rating(1, 1, 5.0, 874965758),
        _rating(2, 2, 3.0, 874965758),
        _rating(5, 4, 2.0, 875000000),
    ])
    _assert_valid_log(out)
    assert summary.layout == "ml-100k"
    assert (summary.items, summary.ratings, summary.users, summary.user_upserts) == (5, 5, 3, 3)
    assert (summary.movies_without_year, summary.pre_epoch_releases) == (1, 1)
    assert (summary.users_without_profile, summary.profiles_without_ratings) == (1, 1)
    assert summary.unknown_movie_ratings == 0
    assert summary.encodings["u.item"] == "latin-1"


def test_ml_1m_exact_output(ml_1m: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = import_movielens(ml_1m, out)

    cat = 978300000_000 - 1000
    assert _lines(out / "catalog.jsonl") == _encoded([
        _item("1", "Toy Story (1995)", ["Animation", "Children's", "Comedy"], _year(1995), 1995, cat),
        _item("2", "Misérables, Les (1995)", ["Drama", "Musical"], _year(1995), 1995, cat),
        _item("3", "City of Lost Children, The (1995)", ["Adventure", "Sci-Fi"], _year(1995), 1995, cat),
    ])
    assert _lines(out / "events.jsonl") == _encoded([
        # Age codes are kept (each is its bucket's lower bound); occupation codes become names.
        _user(3, 978300000_000, 25, "M", "occupation 99", "55117"),
        _rating(3, 3, 4.0, 978300000),
        _user(1, 978300760_000, 1, "F", "K-12 student", "48067"),
        _rating(1, 1, 5.0, 978300760),
        _user(2, 978300760_000, 56, "M", "self-employed", "70072"),
        _rating(2, 2, 3.0, 978300760),
        _rating(1, 7, 1.0, 978301000),
    ])
    _assert_valid_log(out)
    assert summary.layout == "ml-1m"
    assert (summary.items, summary.ratings, summary.users, summary.user_upserts) == (3, 4, 3, 3)
    assert summary.unknown_movie_ratings == 1
    assert summary.encodings == {"movies.dat": "latin-1", "users.dat": "utf-8"}


def test_ml_10m_shape_reads_tags_dat_and_utf8(tmp_path: Path) -> None:
    """ml-10m: the ml-1m shape in UTF-8, no users.dat, tags in tags.dat."""
    root = tmp_path / "ml-10m"
    _write(root / "movies.dat", "1::Misérables, Les (1995)::Drama\n")
    _write(root / "ratings.dat", "1::1::4.5::1000000000\n")
    _write(root / "tags.dat", "1::1::Hugo::1000000001\n2::1::hugo::1000000002\n2::1::a::b::1000000003\n")
    summary = import_movielens(root, tmp_path / "out")
    (item,) = [decode_event(raw) for raw in _lines(tmp_path / "out" / "catalog.jsonl")]
    assert isinstance(item, ItemUpsert)
    assert item.title == "Misérables, Les (1995)" and item.tags == ["Hugo", "a::b"]
    assert summary.encodings["movies.dat"] == "utf-8"
    assert summary.users_without_profile == 1 and summary.user_upserts == 0


# ---------------------------------------------------------------------------------------------
# Properties: determinism, chunking, duplicates, progress, errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["ml_latest", "ml_100k", "ml_1m"])
def test_deterministic(layout: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    source: Path = request.getfixturevalue(layout)
    import_movielens(source, tmp_path / "a")
    import_movielens(source, tmp_path / "b")
    for name in ("catalog.jsonl", "events.jsonl", "import.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _random_ratings(root: Path, rows: int, *, crlf: bool = False, seed: int = 7) -> None:
    rng = random.Random(seed)
    end = "\r\n" if crlf else "\n"
    movies = ["movieId,title,genres"] + [f"{m},Movie {m} ({1990 + m % 30}),Drama" for m in range(1, 51)]
    ratings = ["userId,movieId,rating,timestamp"] + [
        f"{rng.randint(1, 40)},{rng.randint(1, 60)},{rng.randint(1, 10) / 2},"
        f"{rng.randint(10**9, 10**9 + 500)}"
        for _ in range(rows)
    ]
    _write(root / "movies.csv", end.join(movies) + end)
    _write(root / "ratings.csv", end.join(ratings) + end)


def test_chunk_boundaries_and_crlf_do_not_change_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _random_ratings(tmp_path / "lf", 3000)
    _random_ratings(tmp_path / "crlf", 3000, crlf=True)
    import_movielens(tmp_path / "lf", tmp_path / "big")
    monkeypatch.setattr(movielens, "_CHUNK_BYTES", 97)  # many chunks, lines cut mid-way
    monkeypatch.setattr(movielens, "_WRITE_CHUNK", 13)
    import_movielens(tmp_path / "crlf", tmp_path / "small")
    for name in ("catalog.jsonl", "events.jsonl"):
        assert (tmp_path / "big" / name).read_bytes() == (tmp_path / "small" / name).read_bytes()
    events = _assert_valid_log(tmp_path / "small")
    ratings = [e for e in events if isinstance(e, Rating)]
    assert len(ratings) == 3000
    keys = [(e.ts, int(e.user_id), int(e.item_id)) for e in ratings]
    assert keys == sorted(keys)
    assert len({e.event_id for e in events}) == len(events)  # duplicates got distinct ids


def test_duplicate_ratings_get_distinct_event_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "dups"
    _write(root / "movies.csv", "movieId,title,genres\n1,A (2000),Drama\n")
    _write(root / "ratings.csv", "userId,movieId,rating,timestamp\n" + "1,1,4.0,1000000000\n" * 5
           + "1,1,3.0,1000000001\n")
    monkeypatch.setattr(movielens, "_WRITE_CHUNK", 2)  # the duplicates span chunks
    summary = import_movielens(root, tmp_path / "out")
    ids = [decode_event(raw).event_id for raw in _lines(tmp_path / "out" / "events.jsonl")]
    base = "ml-r-1-1-1000000000000"
    assert ids == [base, f"{base}-2", f"{base}-3", f"{base}-4", f"{base}-5", "ml-r-1-1-1000000001000"]
    assert summary.duplicate_ratings == 4


def test_progress_counts_rows_read_and_lines_written(ml_latest: Path, ml_1m: Path, tmp_path: Path) -> None:
    calls: list[int] = []
    import_movielens(ml_latest, tmp_path / "a", progress=calls.append)
    # 6 ratings + 6 tag rows + 6 movies read, then 6 event lines written.
    assert all(c > 0 for c in calls) and sum(calls) == 24
    calls.clear()
    import_movielens(ml_1m, tmp_path / "b", progress=calls.append)
    assert sum(calls) == 4 + 3 + 3 + 7  # ratings, movies, users read; 7 event lines written


@pytest.mark.parametrize(
    "files", [{}, {"README.txt": "hi", "ratings.csv": "userId,movieId,rating,timestamp\n"}]
)
def test_unknown_layout_is_a_clear_error(files: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "not-movielens"
    root.mkdir()
    for name, text in files.items():
        _write(root / name, text)
    expected = r"not a MovieLens directory.*ml-latest: movies\.csv \+ ratings\.csv"
    with pytest.raises(MovieLensError, match=expected):
        import_movielens(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(MovieLensError, match="does not exist"):
        detect_layout(tmp_path / "missing")


def test_detect_layout(ml_latest: Path, ml_100k: Path, ml_1m: Path) -> None:
    assert [detect_layout(p) for p in (ml_latest, ml_100k, ml_1m)] == ["ml-latest", "ml-100k", "ml-1m"]


@pytest.mark.parametrize(("row", "message"), [
    ("1,1,abc,964982703", r"ratings\.csv:3: rating 'abc' is not a number"),
    ("1,1,4.0", r"ratings\.csv:3: expected 4 fields"),
    ("x,1,4.0,964982703", r"ratings\.csv:3: user id 'x' is not an integer"),
    ("1,1,7.0,964982703", r"rating\(s\) outside 0\.5\.\.5\.0"),
    ("1,1,4.0,964982703000", r"timestamp\(s\) outside 1970\.\.2100"),
])
def test_bad_rating_rows_are_named(row: str, message: str, ml_latest: Path, tmp_path: Path) -> None:
    _write(ml_latest / "ratings.csv", f"userId,movieId,rating,timestamp\n1,2,4.0,964982703\n{row}\n")
    with pytest.raises(MovieLensError, match=message):
        import_movielens(ml_latest, tmp_path / "out")


def test_failed_import_leaves_previous_output_untouched(ml_latest: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    import_movielens(ml_latest, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _write(ml_latest / "movies.csv", "movieId,title,genres\n1,Toy Story (1995),Comedy\nnope,Bad,Drama\n")
    with pytest.raises(MovieLensError, match=r"movies\.csv:3: movie id 'nope'"):
        import_movielens(ml_latest, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_blank_lines_and_quoted_ratings_take_the_slow_path(ml_latest: Path, tmp_path: Path) -> None:
    _write(ml_latest / "ratings.csv",
           'userId,movieId,rating,timestamp\n\n"1",1,4.0,964982703\n\n2,2,3.0,964982704\n')
    summary = import_movielens(ml_latest, tmp_path / "out")
    assert summary.ratings == 2


# ---------------------------------------------------------------------------------------------
# The real ml-latest-small (read-only, next to the repository)
# ---------------------------------------------------------------------------------------------


def _ml_latest_small() -> Path:
    path = Settings().movielens_path  # relative to the repository root, where the tests run from
    return path if path.is_absolute() else Path(__file__).resolve().parents[2] / path


@pytest.mark.movielens
def test_real_ml_latest_small(tmp_path: Path) -> None:
    source = _ml_latest_small()
    if not (source / "ratings.csv").is_file():
        pytest.skip(f"ml-latest-small not found at {source} (set STREAMREC_MOVIELENS_PATH to point at it)")
    progress: list[int] = []
    summary = import_movielens(source, tmp_path / "ml", progress=progress.append)
    events = _assert_valid_log(tmp_path / "ml")
    ratings = [e for e in events if isinstance(e, Rating)]
    items = [e for e in events if isinstance(e, ItemUpsert)]
    assert len(ratings) == summary.ratings == 100_836
    assert len(items) == summary.items == 9_742
    assert len({e.user_id for e in ratings}) == summary.users == 610
    assert summary.unknown_movie_ratings == 0
    assert len({e.event_id for e in events}) == len(events)
    toy_story = next(e for e in items if e.item_id == "1")
    assert (toy_story.title, toy_story.year) == ("Toy Story (1995)", 1995)
    assert sum(progress) > 2 * 100_836

