"""Raw files as they come from the publishers, with the faults real downloads have: a UTF-8 byte-order mark,
the wrong encoding, values out of range, duplicate (user, item) pairs, a CSV quote never closed, and Steam's
`recommend: False`. Fixtures are small files written in tmp_path from each publisher's documented format
(ML-1M README, Yelp's and Amazon's JSON schemas, Steam's Python-literal lines, CSV). RELIABILITY.md lists each
fault per format with the test here that covers it."""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import random
from pathlib import Path

import polars as pl
import pytest

from lagcl.config import DataConfig, load_config
from lagcl.data.prepare import DUPLICATE_RULE, prepare
from lagcl.data.readers import read_raw
from lagcl.errors import ConfigError, DataError


def config(root: Path, fmt: str, **kw) -> DataConfig:
    kw.setdefault("name", "fixture")
    return DataConfig(format=fmt, path=str(root), **kw)


def write(path: Path, lines: list[str], encoding: str = "utf-8", bom: bool = False) -> Path:
    data = (codecs.BOM_UTF8 if bom else b"") + ("\n".join(lines) + "\n").encode(encoding)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


# --- one fixture per publisher's format; `bom` writes a UTF-8 byte-order mark before every file --------

def ml1m(root: Path, bom: bool = False, ratings: list[str] | None = None) -> DataConfig:
    """ML-1M README: UserID::MovieID::Rating::Timestamp, UserID::Gender::Age::Occupation::Zip-code,
    MovieID::Title::Genres, latin-1 (the BOM variant is a file an editor re-saved as UTF-8)."""
    enc = "utf-8" if bom else "latin-1"
    write(root / "ratings.dat", ratings or ["1::1193::5::978300760", "1::661::3::978302109", "2::1193::4::978298413"],
          enc, bom)
    write(root / "users.dat", ["1::F::1::10::48067", "2::M::56::16::70072"], enc, bom)
    write(root / "movies.dat", ["1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
                                "661::Léon (Professional), The (1994)::Crime|Drama|Romance"], enc, bom)
    return config(root, "ml-1m", rating_range=(1, 5))


def yelp(root: Path, bom: bool = False) -> DataConfig:
    """Yelp Open Dataset: one JSON object per line (review: user_id, business_id, stars, date)."""
    write(root / "yelp_academic_dataset_review.json", [json.dumps(r, ensure_ascii=False) for r in [
        {"review_id": "r1", "user_id": "u1", "business_id": "b1", "stars": 4.0, "date": "2018-07-07 22:09:11",
         "text": "Très bon 🍜, \"great\""},
        {"review_id": "r2", "user_id": "u2", "business_id": "b1", "stars": 2.0, "date": "2019-01-02 10:00:00"}]],
        bom=bom)
    write(root / "yelp_academic_dataset_business.json", [json.dumps(
        {"business_id": "b1", "name": "Café Ñ", "categories": "Food, Coffee", "city": "Tucson", "state": "AZ",
         "stars": 4.5, "review_count": 2}, ensure_ascii=False)], bom=bom)
    return config(root, "yelp", rating_range=(1, 5))


def amazon2018(root: Path, bom: bool = False, reviews: list[dict] | None = None) -> DataConfig:
    """Amazon 2018: gzipped JSON lines (reviewerID, asin, overall, unixReviewTime) + meta (asin, title, category)."""
    write(root / "Books.json.gz", [json.dumps(r) for r in reviews or [
        {"reviewerID": "A1", "asin": "0001", "overall": 5.0, "unixReviewTime": 1400000000},
        {"reviewerID": "A2", "asin": "0001", "overall": 3.0, "unixReviewTime": 1400000100}]], bom=bom)
    write(root / "meta_Books.json.gz", [json.dumps({"asin": "0001", "title": "A Book", "category": ["Books"]})],
          bom=bom)
    return config(root, "amazon2018", files={"reviews": "Books.json.gz", "meta": "meta_Books.json.gz"},
                  rating_range=(1, 5))


def amazon2023(root: Path, bom: bool = False) -> DataConfig:
    """Amazon 2023: JSON lines (user_id, parent_asin, rating, timestamp in ms) + meta (parent_asin, title)."""
    write(root / "Books.jsonl", [json.dumps({"user_id": "U1", "parent_asin": "P1", "asin": "A", "rating": 5.0,
                                             "timestamp": 1588687728923})], bom=bom)
    write(root / "meta_Books.jsonl", [json.dumps({"parent_asin": "P1", "title": "T", "categories": ["Books"]})],
          bom=bom)
    return config(root, "amazon2023", files={"reviews": "Books.jsonl", "meta": "meta_Books.jsonl"},
                  rating_range=(1, 5))


def steam_review(item: str, recommend: bool, posted: str = "Posted November 5, 2011.") -> str:
    return f"{{'funny': '', 'posted': '{posted}', 'item_id': '{item}', 'recommend': {recommend}, 'review': 'x'}}"


def steam(root: Path, bom: bool = False, users: dict[str, list[str]] | None = None) -> DataConfig:
    """Steam (australian_user_reviews.json, steam_games.json): Python-literal lines, one user record each."""
    users = users or {"76561197970982479": [steam_review("1250", True), steam_review("22200", False)]}
    write(root / "australian_user_reviews.json",
          [f"{{'user_id': '{u}', 'user_url': 'http://steamcommunity.com/id/{u}', 'reviews': [{', '.join(rs)}]}}"
           for u, rs in users.items()], bom=bom)
    write(root / "steam_games.json", ["{'app_name': 'Killing Floor', 'genres': ['Action'], 'id': '1250'}"], bom=bom)
    return config(root, "steam", all_positive=True, rating_range=(0, 1), rating_threshold=0.5)


def table(root: Path, bom: bool = False, ratings: list[str] | None = None, items: list[str] | None = None,
          **kw) -> DataConfig:
    """CSV with a header row (user_id,item_id,rating,timestamp; item_id,title,genres)."""
    write(root / "ratings.csv", ["user_id,item_id,rating,timestamp",
                                 *(ratings or ["u1,i1,5,1", "u2,i1,4,2"])], bom=bom)
    files = {"interactions": "ratings.csv"}
    if items is not None:
        write(root / "items.csv", ["item_id,title,genres", *items], bom=bom)
        files["items"] = "items.csv"
    return config(root, "table", files=files, rating_range=(1, 5),
                  columns={"title": "title", "categories": "genres"}, **kw)


def atomic(root: Path, bom: bool = False) -> DataConfig:
    """RecBole atomic files: tab separated, header `name:type`."""
    write(root / "fixture.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
                                   "1\t10\t5\t100", "2\t10\t3\t200"], bom=bom)
    return config(root, "atomic", rating_range=(1, 5))


FORMATS = {"ml-1m": ml1m, "yelp": yelp, "amazon2018": amazon2018, "amazon2023": amazon2023, "steam": steam,
           "table": table, "atomic": atomic}


# --- encodings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_reader_reads_a_file_with_a_utf8_byte_order_mark_exactly_as_the_file_without_it(fmt, tmp_path):
    plain, marked = tmp_path / "plain", tmp_path / "bom"
    plain.mkdir(), marked.mkdir()
    a = read_raw(FORMATS[fmt](plain), plain)
    b = read_raw(FORMATS[fmt](marked, bom=True), marked)
    assert b.interactions.rows() == a.interactions.rows()
    assert b.users.rows() == a.users.rows() and b.items.rows() == a.items.rows()
    assert b.skipped_lines == 0 and not any("\ufeff" in str(v) or "ï»¿" in str(v) for v in b.interactions.rows())


def test_ml1m_with_a_bom_keeps_the_first_user_its_demographics_and_the_first_movie_its_title(tmp_path):
    ds = read_raw(ml1m(tmp_path, bom=True), tmp_path)
    assert sorted(ds.interactions["user_raw"].unique().to_list()) == ["1", "2"]
    assert ds.users.filter(pl.col("raw_id") == "1").select("gender", "age").rows() == [("F", 1)]
    assert ds.items.filter(pl.col("raw_id") == "1193")["title"].to_list() == ["One Flew Over the Cuckoo's Nest"]
    assert ds.items.filter(pl.col("raw_id") == "661")["title"].to_list() == ["Léon (Professional), The"]


@pytest.mark.parametrize("bom", [codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE])
def test_a_utf16_file_is_an_error_naming_the_file_and_how_to_convert_it(bom, tmp_path):
    cfg = yelp(tmp_path)
    path = tmp_path / "yelp_academic_dataset_review.json"
    path.write_bytes(bom + path.read_text().encode("utf-16-le" if bom == codecs.BOM_UTF16_LE else "utf-16-be"))
    with pytest.raises(DataError, match=r"review\.json is UTF-16 or UTF-32 text .* convert it to UTF-8"):
        read_raw(cfg, tmp_path)


def test_a_latin1_csv_is_an_error_at_its_line_and_byte_offset_and_reads_with_data_encoding(tmp_path):
    cfg = table(tmp_path, items=["i1,Café,Food"])
    (tmp_path / "items.csv").write_bytes("item_id,title,genres\ni1,Café,Food\n".encode("latin-1"))
    offset = len("item_id,title,genres\ni1,Caf")
    with pytest.raises(DataError, match=rf"items\.csv:2: not valid UTF-8 text \(.* at byte offset {offset} of the "
                                        r"file\); set data\.encoding"):
        read_raw(cfg, tmp_path)
    items = read_raw(cfg.model_copy(update={"encoding": "latin-1"}), tmp_path).items
    assert items["title"].to_list() == ["Café"]


def test_data_encoding_must_be_a_known_line_readable_codec():
    with pytest.raises(ConfigError, match="unknown encoding 'latin-9x'"):
        load_config(data="ml-100k", overrides=["data.encoding=latin-9x"])
    with pytest.raises(ConfigError, match="convert the files to UTF-8"):
        load_config(data="ml-100k", overrides=["data.encoding=utf-16"])


# --- values out of range -----------------------------------------------------------------------------

def test_ml1m_ids_that_are_not_positive_integers_are_errors_at_file_and_line(tmp_path):
    cfg = ml1m(tmp_path, ratings=["1::1193::5::978300760", "0::661::3::978302109", "2::1193::4::978298413"])
    with pytest.raises(DataError, match=r"ratings\.dat:2: UserID '0' is not a positive integer"):
        read_raw(cfg, tmp_path)


@pytest.mark.parametrize("value, why", [(6, r"rating 6 is outside data\.rating_range \[1, 5\]"),
                                        (-1, r"rating -1 is outside data\.rating_range \[1, 5\]")])
def test_a_rating_outside_the_scale_is_an_error_at_file_and_line(value, why, tmp_path):
    cfg = amazon2018(tmp_path, reviews=[
        {"reviewerID": "A1", "asin": "0001", "overall": 5.0, "unixReviewTime": 1400000000},
        {"reviewerID": "A2", "asin": "0001", "overall": value, "unixReviewTime": 1400000100}])
    with pytest.raises(DataError, match=rf"Books\.json\.gz:2: {why}"):
        read_raw(cfg, tmp_path)


def test_a_negative_or_far_future_timestamp_is_an_error_at_file_and_line(tmp_path):
    cfg = table(tmp_path, ratings=["u1,i1,5,1", "u2,i1,4,-5"])
    with pytest.raises(DataError, match=r"ratings\.csv:3: timestamp -5 is not a date between 1970 and 2100"):
        read_raw(cfg, tmp_path)
    cfg = table(tmp_path, ratings=["u1,i1,5,1", "u2,i1,4,99999999999"])
    with pytest.raises(DataError, match=r"ratings\.csv:3: timestamp 99999999999"):
        read_raw(cfg, tmp_path)


def test_lenient_mode_counts_skipped_lines_by_reason_with_their_first_three_places(tmp_path):
    ratings = ["u1,i1,5,1", "u1,i2,6,1", "u1,i3,0,1", "  ,i4,5,1", "u1,i5,-2,1", "u1,i6,9,1", "u1,i7,5,-1",
               "u1,i8,x,1"]
    cfg = table(tmp_path, ratings=ratings, strict=False)
    ds = read_raw(cfg, tmp_path)
    assert ds.interactions["item_raw"].to_list() == ["i1"]
    assert ds.skipped == {
        "rating out of range": {"count": 4, "first_lines": ["ratings.csv:3", "ratings.csv:4", "ratings.csv:6"]},
        "empty id": {"count": 1, "first_lines": ["ratings.csv:5"]},
        "timestamp out of range": {"count": 1, "first_lines": ["ratings.csv:8"]},
        "malformed line": {"count": 1, "first_lines": ["ratings.csv:9"]},
    }
    assert ds.skipped_lines == 7


def test_parquet_rows_out_of_range_are_counted_by_reason_with_row_numbers(tmp_path):
    pl.DataFrame({"user_id": ["u1", "u2", "u3", ""], "item_id": ["i1", "i1", "i1", "i1"],
                  "rating": [5.0, 7.0, 4.0, 4.0], "timestamp": [1, 2, -3, 4]}).write_parquet(tmp_path / "r.parquet")
    cfg = config(tmp_path, "table", files={"interactions": "r.parquet"}, rating_range=(1, 5), strict=False)
    ds = read_raw(cfg, tmp_path)
    assert ds.interactions["user_raw"].to_list() == ["u1"]
    assert ds.skipped == {"rating out of range": {"count": 1, "first_lines": ["r.parquet:row 2"]},
                          "timestamp out of range": {"count": 1, "first_lines": ["r.parquet:row 3"]},
                          "empty id": {"count": 1, "first_lines": ["r.parquet:row 4"]}}
    with pytest.raises(DataError, match=r"r\.parquet: row 2: .*rating out of range \(3 such rows"):
        read_raw(cfg.model_copy(update={"strict": True}), tmp_path)


# --- duplicates ------------------------------------------------------------------------------------

def grid(n_users: int, n_items: int) -> list[str]:
    return [f"u{u},i{i},5,{10 + i}" for u in range(n_users) for i in range(n_items)]


def test_duplicate_pairs_are_counted_and_the_latest_rating_wins_on_timestamp_then_file_order(tmp_path):
    cfg = table(tmp_path, ratings=[*grid(6, 6), "u0,i0,1,99", "u0,i1,1,5", "u0,i2,2,12", "u0,i2,1,12"], kcore=1)
    out = prepare(read_raw(cfg, tmp_path), cfg, seed=1)
    by_item = dict(out.interactions.filter(pl.col("user") == 0).select("item", "rating").iter_rows())
    assert (by_item[0], by_item[1], by_item[2]) == (1.0, 5.0, 1.0)  # later timestamp; older one loses; last line
    assert out.stats["duplicates"] == {"pairs_repeated": 3, "rows_dropped": 4,
                                       "pairs_with_different_ratings": 3, "rule": DUPLICATE_RULE}
    assert out.stats["interactions"] == 36


def test_steam_user_records_repeated_whole_are_counted_as_equal_duplicates(tmp_path):
    reviews = [steam_review(str(i), True) for i in range(5)]
    users = {f"user{u}": reviews for u in range(5)}
    cfg = steam(tmp_path, users=users)
    path = tmp_path / "australian_user_reviews.json"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[0], lines[1]]) + "\n")  # two user records repeated verbatim
    out = prepare(read_raw(cfg, tmp_path), cfg, seed=1)
    assert out.stats["duplicates"]["pairs_repeated"] == 10
    assert out.stats["duplicates"]["rows_dropped"] == 10
    assert out.stats["duplicates"]["pairs_with_different_ratings"] == 0
    assert out.stats["interactions"] == 25


# --- CSV quoting -------------------------------------------------------------------------------------

TITLES = {f"i{i}": f"Title {i}, with a comma" if i <= 5 else f"Title {i}" for i in range(1, 30)}
ITEMS = [f'{i},"{t}",Drama|Comedy' if "," in t else f"{i},{t},Drama|Comedy" for i, t in TITLES.items()]


def test_an_unclosed_csv_quote_is_reported_at_the_line_where_the_field_opened(tmp_path):
    items = [*ITEMS[:5], 'i99,"Broken title,Drama', *ITEMS[5:]]
    cfg = table(tmp_path, items=items)
    with pytest.raises(DataError, match=r"items\.csv:7: a quoted field opens on this line and is not closed where "
                                        r"the row should end \(the row runs to line 31\)"):
        read_raw(cfg, tmp_path)


def test_lenient_mode_skips_only_the_line_with_the_unclosed_quote_and_keeps_every_other_item(tmp_path):
    items = [*ITEMS[:5], 'i99,"Broken title,Drama', *ITEMS[5:]]
    cfg = table(tmp_path, ratings=[f"u1,i{i},5,1" for i in range(1, 30)], items=items, strict=False)
    ds = read_raw(cfg, tmp_path)
    assert dict(ds.items.select("raw_id", "title").iter_rows()) == TITLES  # the 24 swallowed lines read again
    assert ds.items.filter(pl.col("raw_id") == "i29")["categories"].to_list() == [["Drama", "Comedy"]]
    assert ds.skipped == {"unclosed quote": {"count": 1, "first_lines": ["items.csv:7"]}}


def test_a_quoted_field_that_spans_lines_legitimately_is_one_row(tmp_path):
    cfg = table(tmp_path, items=['i1,"Line one\nline two, ""quoted""",Drama', "i2,Plain,Comedy"])
    ds = read_raw(cfg, tmp_path)
    assert dict(ds.items.select("raw_id", "title").iter_rows()) == {"i1": 'Line one\nline two, "quoted"',
                                                                    "i2": "Plain"}
    assert ds.skipped_lines == 0


# --- Steam: the paper's reading and the signed one --------------------------------------------------

def steam_users(n_users: int = 6, n_items: int = 6) -> dict[str, list[str]]:
    """Every user reviews every item; user u does not recommend item u (one negative each)."""
    return {f"user{u}": [steam_review(str(i), i != u) for i in range(n_items)] for u in range(n_users)}


def test_steam_is_all_positive_by_default_and_signed_reads_not_recommended_as_negative(tmp_path):
    cfg = steam(tmp_path, users=steam_users())
    paper = prepare(read_raw(cfg, tmp_path), cfg, seed=1)
    assert (paper.stats["positives"], paper.stats["negatives"]) == (36, 0)

    signed_cfg = cfg.model_copy(update={"steam_signed": True})
    signed = prepare(read_raw(signed_cfg, tmp_path), signed_cfg, seed=1)
    assert (signed.stats["positives"], signed.stats["negatives"]) == (30, 6)
    negatives = signed.interactions.filter(pl.col("sign") < 0).join(signed.users, on="user").join(
        signed.items, on="item")
    assert sorted(negatives.select("raw_id", "raw_id_right").rows()) == [(f"user{u}", str(u)) for u in range(6)]
    both = {"all_positive (paper)": {"users": 6, "items": 6, "interactions": 36, "positives": 36, "negatives": 0,
                                     "density": 1.0},
            "signed (data.steam_signed)": {"users": 6, "items": 6, "interactions": 36, "positives": 30,
                                           "negatives": 6, "density": 1.0}}
    assert paper.stats["steam_readings"] == both == signed.stats["steam_readings"]


def test_steam_signed_is_a_config_error_for_another_format():
    with pytest.raises(ConfigError, match="steam_signed is read by format 'steam' only"):
        load_config(data="ml-100k", overrides=["data.steam_signed=true"])


# --- property: random clean files -> the statistics of an independent computation --------------------

def independent_stats(rows: list[tuple[str, str, int, int]], threshold: float, k: int) -> dict[str, int]:
    """Table 1 in a few lines of plain Python: latest row per pair, sign, k-core of positives, negatives of
    the survivors."""
    latest: dict[tuple[str, str], tuple[int, int, int]] = {}
    for n, (u, i, r, t) in enumerate(rows):
        if (u, i) not in latest or (t, n) >= latest[(u, i)][1:]:
            latest[(u, i)] = (r, t, n)
    pos = {p for p, (r, _, _) in latest.items() if r > threshold}
    while True:
        users = {u: sum(1 for v, _ in pos if v == u) for u, _ in pos}
        items = {i: sum(1 for _, j in pos if j == i) for _, i in pos}
        kept = {(u, i) for u, i in pos if users[u] >= k and items[i] >= k}
        if kept == pos:
            break
        pos = kept
    us, its = {u for u, _ in pos}, {i for _, i in pos}
    neg = [p for p, (r, _, _) in latest.items() if r <= threshold and p[0] in us and p[1] in its]
    return {"users": len(us), "items": len(its), "positives": len(pos), "negatives": len(neg),
            "interactions": len(pos) + len(neg)}


@pytest.mark.parametrize("seed", range(12))
def test_prepare_statistics_of_random_clean_csv_files_equal_an_independent_computation(seed, tmp_path):
    rnd = random.Random(seed)
    n_users, n_items = rnd.randint(5, 25), rnd.randint(5, 25)
    rows = [(f"user {u}", f"item,{i}" if rnd.random() < 0.2 else f"i{i}", rnd.randint(1, 5), rnd.randint(0, 50))
            for _ in range(rnd.randint(100, 600)) for u, i in [(rnd.randrange(n_users), rnd.randrange(n_items))]]
    with open(tmp_path / "ratings.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("user_id", "item_id", "rating", "timestamp"), *rows])
    k = rnd.randint(1, 4)
    cfg = config(tmp_path, "table", files={"interactions": "ratings.csv"}, rating_range=(1, 5), kcore=k,
                 rating_threshold=3)
    want = independent_stats(rows, 3, k)
    if want["positives"] == 0:
        with pytest.raises(DataError, match="empty after"):
            prepare(read_raw(cfg, tmp_path), cfg, seed=seed)
        return
    stats = prepare(read_raw(cfg, tmp_path), cfg, seed=seed).stats
    assert {key: stats[key] for key in want} == want
    assert stats["positives_train"] + stats["positives_valid"] + stats["positives_test"] == want["positives"]


# --- the run's summary -------------------------------------------------------------------------------

def test_the_run_summary_lists_skipped_lines_by_reason_duplicates_and_both_steam_readings(tmp_path):
    from flows.summary import raw_data_lines

    users = steam_users()
    users["user0"] = [*users["user0"], steam_review("0", False), "{'item_id': '5', 'recommend': 'yes'}"]
    cfg = steam(tmp_path, users=users).model_copy(update={"strict": False, "kcore": 2})
    path = tmp_path / "australian_user_reviews.json"
    path.write_text(path.read_text() + (path.read_text().splitlines()[1] + "\n") * 2)
    stats = prepare(read_raw(cfg, tmp_path), cfg, seed=1).stats
    assert raw_data_lines(stats) == [
        "  skipped (malformed line): 1 line(s), first at australian_user_reviews.json:1",
        "  duplicates: 6 (user, item) pair(s) given more than once (0 with different ratings), 12 row(s) merged; "
        + DUPLICATE_RULE,
        "  steam read all_positive (paper): 5 users, 6 items, 30 interactions (30 positive, 0 negative), "
        "density 1.0000",
        "  steam read signed (data.steam_signed): 5 users, 6 items, 30 interactions (25 positive, 5 negative), "
        "density 1.0000"]


# --- a truncated or corrupt gzip (a download cut short) ------------------------------------------------------

def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def many_reviews(n: int = 400) -> list[dict]:
    rng = random.Random(0)
    return [{"reviewerID": f"A{k % 40}", "asin": f"{k:04d}", "overall": float(rng.randint(1, 5)),
             "unixReviewTime": 1400000000 + k, "reviewText": " ".join(rng.choice("abcdefgh") * 5 for _ in range(20))}
            for k in range(n)]


def test_a_truncated_gzip_is_one_error_naming_the_file_and_what_to_do(tmp_path):
    cfg = amazon2018(tmp_path, reviews=many_reviews())
    cut(tmp_path / "Books.json.gz")
    with pytest.raises(DataError) as err:
        read_raw(cfg, tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "Books.json.gz") in msg and "truncated or corrupt after line" in msg
    assert "download it again, or set data.strict=false" in msg


def test_lenient_mode_keeps_the_lines_before_the_cut_and_counts_the_loss(tmp_path):
    reviews = many_reviews()
    cfg = amazon2018(tmp_path, reviews=reviews).model_copy(update={"strict": False})
    cut(tmp_path / "Books.json.gz")
    ds = read_raw(cfg, tmp_path)
    kept = ds.interactions.height
    assert 0 < kept < len(reviews)
    assert ds.interactions["item_raw"].to_list()[:kept] == [r["asin"] for r in reviews[:kept]]  # the first lines, in order
    [(reason, entry)] = [(r, e) for r, e in ds.skipped.items() if "gzip" in r]
    assert reason == "truncated or corrupt gzip (the rest of the file is lost)" and entry["count"] == 1


def test_a_truncated_metadata_gzip_and_a_corrupt_one_are_errors_too(tmp_path):
    cfg = amazon2018(tmp_path)
    meta = tmp_path / "meta_Books.json.gz"
    write(meta, [json.dumps({"asin": f"{k:04d}", "title": f"Book {k}", "category": ["Books"]}) for k in range(300)])
    cut(meta, 0.7)
    with pytest.raises(DataError, match="meta_Books.json.gz is truncated or corrupt"):
        read_raw(cfg, tmp_path)
    data = bytearray(gzip.compress(b"".join(json.dumps({"asin": "0001", "title": "x"}).encode() + b"\n"
                                            for _ in range(50))))
    data[len(data) // 2] ^= 0xFF   # one flipped byte inside the deflate stream
    meta.write_bytes(bytes(data))
    with pytest.raises(DataError, match="meta_Books.json.gz"):
        read_raw(cfg, tmp_path)


def test_the_raw_digest_counts_a_truncated_gzips_lines_before_the_cut_instead_of_crashing(tmp_path):
    from lagcl.data.digest import count_rows
    path = write(tmp_path / "r.json.gz", [json.dumps(r) for r in many_reviews()])
    cut(path)
    assert 0 < count_rows(path) < 400
